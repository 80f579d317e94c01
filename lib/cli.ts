/**
 * argv -> a typed Command. Pure: no I/O, no Deno.* (the pkgx way), tested on its own.
 * Flags that change the configuration become Overrides on lychd.yaml's keys, so that flags
 * and the file go through one validation (lib/config/validate.ts).
 * The flag parser is our own, not node:util's parseArgs: loading node:util costs ~9 ms of
 * start-up, a third of `lychd --version`.
 */
import type { ConfigOptions } from "./config/types.ts";
import type { Override } from "./config/yaml.ts";
import { suggest } from "./suggest.ts";
import { parseDuration } from "./duration.ts";
import { UsageError } from "./errors.ts";

export type { ConfigOptions };

export type Command =
  | { kind: "help"; topic: string | null }
  | { kind: "version" }
  | {
    kind: "init";
    config: ConfigOptions;
    dryRun: boolean;
    force: boolean;
    reload: boolean;
    pull: boolean;
  }
  | { kind: "render"; config: ConfigOptions; out: string; force: boolean }
  | {
    kind: "swap";
    config: ConfigOptions;
    engine: string;
    timeoutSec: number | null;
    wait: boolean;
    rollback: boolean;
    drain: boolean;
    drainTimeoutSec: number | null;
  }
  | { kind: "gate"; config: ConfigOptions }
  | { kind: "status"; config: ConfigOptions; json: boolean }
  | { kind: "stop"; config: ConfigOptions; all: boolean }
  | { kind: "logs"; config: ConfigOptions; target: string | null; follow: boolean; lines: number }
  | { kind: "doctor"; config: ConfigOptions }
  | { kind: "uninstall"; config: ConfigOptions; purge: boolean; dryRun: boolean; force: boolean }
  | { kind: "completions"; shell: "bash" | "zsh" | "fish" }
  | { kind: "pull"; config: ConfigOptions; engines: string[]; models: boolean };

/** A flag takes one value ("string"), may repeat ("list"), or takes none ("boolean"). */
type FlagKind = "string" | "list" | "boolean";

/** Flags of the commands that operate what init wrote: which setup, not what it contains. */
const SETUP_FLAGS: Record<string, FlagKind> = {
  config: "string",
  system: "boolean",
  help: "boolean",
};

const CONFIG_FLAGS: Record<string, FlagKind> = {
  engines: "string",
  active: "string",
  model: "list",
  image: "list",
  gpu: "string",
  "model-cache": "string",
  "hf-token-secret": "string",
  config: "string",
  system: "boolean",
  help: "boolean",
};

/** Every command's flags and arguments: the parser and the shell completions read this. */
export const COMMANDS: Record<
  string,
  { flags: Record<string, FlagKind>; positionals?: string[]; short?: Record<string, string> }
> = {
  init: {
    flags: {
      ...CONFIG_FLAGS,
      "dry-run": "boolean",
      force: "boolean",
      "no-reload": "boolean",
      pull: "boolean",
    },
  },
  render: { flags: { ...CONFIG_FLAGS, out: "string", force: "boolean" } },
  swap: {
    flags: {
      ...SETUP_FLAGS,
      timeout: "string",
      "no-wait": "boolean",
      "no-rollback": "boolean",
      "drain-timeout": "string",
      "no-drain": "boolean",
    },
    positionals: ["ENGINE"],
  },
  gate: { flags: SETUP_FLAGS },
  status: { flags: { ...SETUP_FLAGS, json: "boolean" } },
  stop: { flags: { ...SETUP_FLAGS, all: "boolean" } },
  logs: {
    flags: { ...SETUP_FLAGS, follow: "boolean", lines: "string" },
    positionals: ["TARGET"],
    short: { f: "follow", n: "lines" },
  },
  doctor: { flags: SETUP_FLAGS },
  uninstall: {
    flags: { ...SETUP_FLAGS, purge: "boolean", "dry-run": "boolean", force: "boolean" },
  },
  completions: { flags: { help: "boolean" }, positionals: ["SHELL"] },
  pull: { flags: { ...SETUP_FLAGS, models: "boolean" }, positionals: ["ENGINE..."] },
};

function parseFor(command: string, args: string[]): Values {
  const c = COMMANDS[command];
  return parse(args, c.flags, command, c.positionals, c.short);
}

export function parseCommand(argv: string[]): Command {
  const [first, ...rest] = argv;
  if (first === undefined || first === "help") return { kind: "help", topic: rest[0] ?? null };
  if (first === "--help" || first === "-h") return { kind: "help", topic: null };
  if (first === "--version" || first === "-V" || first === "version") return { kind: "version" };
  switch (first) {
    case "init": {
      const v = parseFor("init", rest);
      if (v.help) return { kind: "help", topic: "init" };
      return {
        kind: "init",
        config: configOptions(v),
        dryRun: v["dry-run"] === true,
        force: v.force === true,
        reload: v["no-reload"] !== true,
        pull: v.pull === true,
      };
    }
    case "render": {
      const v = parseFor("render", rest);
      if (v.help) return { kind: "help", topic: "render" };
      if (typeof v.out !== "string" || v.out === "") {
        throw new UsageError("render needs --out DIR, the folder to write the files into.");
      }
      return { kind: "render", config: configOptions(v), out: v.out, force: v.force === true };
    }
    case "swap": {
      const v = parseFor("swap", rest);
      if (v.help) return { kind: "help", topic: "swap" };
      const [engine] = v._ as string[];
      if (!engine) throw new UsageError("swap needs the engine to switch to: lychd swap ENGINE");
      if (v["no-drain"] === true && v["drain-timeout"] !== undefined) {
        throw new UsageError("--no-drain and --drain-timeout contradict each other: pick one");
      }
      return {
        kind: "swap",
        config: configOptions(v),
        engine,
        timeoutSec: durationFlag(v, "timeout"),
        wait: v["no-wait"] !== true,
        rollback: v["no-rollback"] !== true,
        drain: v["no-drain"] !== true,
        drainTimeoutSec: durationFlag(v, "drain-timeout"),
      };
    }
    case "gate": {
      const v = parseFor("gate", rest);
      if (v.help) return { kind: "help", topic: "gate" };
      return { kind: "gate", config: configOptions(v) };
    }
    case "status": {
      const v = parseFor("status", rest);
      if (v.help) return { kind: "help", topic: "status" };
      return { kind: "status", config: configOptions(v), json: v.json === true };
    }
    case "stop": {
      const v = parseFor("stop", rest);
      if (v.help) return { kind: "help", topic: "stop" };
      return { kind: "stop", config: configOptions(v), all: v.all === true };
    }
    case "logs": {
      const v = parseFor("logs", rest);
      if (v.help) return { kind: "help", topic: "logs" };
      const lines = v.lines === undefined ? 50 : Number(v.lines);
      if (!Number.isInteger(lines) || lines < 1) {
        throw new UsageError(`--lines takes a positive number, got "${v.lines}"`);
      }
      const [target] = v._ as string[];
      return {
        kind: "logs",
        config: configOptions(v),
        target: target ?? null,
        follow: v.follow === true,
        lines,
      };
    }
    case "doctor": {
      const v = parseFor("doctor", rest);
      if (v.help) return { kind: "help", topic: "doctor" };
      return { kind: "doctor", config: configOptions(v) };
    }
    case "uninstall": {
      const v = parseFor("uninstall", rest);
      if (v.help) return { kind: "help", topic: "uninstall" };
      return {
        kind: "uninstall",
        config: configOptions(v),
        purge: v.purge === true,
        dryRun: v["dry-run"] === true,
        force: v.force === true,
      };
    }
    case "pull": {
      const v = parseFor("pull", rest);
      if (v.help) return { kind: "help", topic: "pull" };
      return {
        kind: "pull",
        config: configOptions(v),
        engines: v._ as string[],
        models: v.models === true,
      };
    }
    case "completions": {
      const v = parseFor("completions", rest);
      if (v.help) return { kind: "help", topic: "completions" };
      const [shell] = v._ as string[];
      if (shell !== "bash" && shell !== "zsh" && shell !== "fish") {
        throw new UsageError(
          `completions takes bash, zsh or fish, got ${shell ? `"${shell}"` : "nothing"}`,
        );
      }
      return { kind: "completions", shell };
    }
    default:
      throw new UsageError(`unknown command "${first}". Run \`lychd --help\` for the commands.`);
  }
}

type Values = Record<string, string | boolean | string[] | undefined> & { _?: string[] };

/** A duration flag's seconds (90s, 15m, 1h), null when not given. */
function durationFlag(v: Values, name: string): number | null {
  const raw = v[name];
  if (typeof raw !== "string") return null;
  const sec = parseDuration(raw);
  if (sec === null || sec < 1) {
    throw new UsageError(`--${name} takes a duration such as 90s, 15m or 1h, got "${raw}"`);
  }
  return sec;
}

/**
 * `--flag value`, `--flag=value`, `-x` short forms, and up to `positionals.length` plain
 * arguments (in `_`); every mistake a UsageError.
 */
export function parse(
  args: string[],
  flags: Record<string, FlagKind>,
  command: string,
  positionals: string[] = [],
  short: Record<string, string> = {},
): Values {
  const values: Values = { _: [] };
  const help = `See \`lychd ${command} --help\`.`;
  for (let i = 0; i < args.length; i++) {
    let arg = args[i];
    if (arg === "-h") arg = "--help";
    else if (/^-[a-zA-Z]$/.test(arg) && short[arg[1]]) arg = `--${short[arg[1]]}`;
    if (!arg.startsWith("-")) {
      const unlimited = positionals.at(-1)?.endsWith("...");
      if (!unlimited && values._!.length >= positionals.length) {
        throw new UsageError(
          `lychd ${command} takes ${
            positionals.length ? `only ${positionals.join(" ")}` : "no argument"
          }, ` +
            `not "${arg}". ${help}`,
        );
      }
      values._!.push(arg);
      continue;
    }
    if (!arg.startsWith("--") || arg === "--") {
      throw new UsageError(`unknown option ${arg}. ${help}`);
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const kind = flags[name];
    if (!kind) {
      const hint = suggest(name, Object.keys(flags)).replace(/"([^"]+)"/, '"--$1"');
      throw new UsageError(`unknown option --${name}${hint}. ${help}`);
    }
    if (kind === "boolean") {
      if (eq >= 0) throw new UsageError(`--${name} takes no value. ${help}`);
      values[name] = true;
      continue;
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < args.length) value = args[++i];
    else throw new UsageError(`--${name} needs a value. ${help}`);
    if (kind === "list") values[name] = [...(values[name] as string[] | undefined ?? []), value];
    else if (values[name] !== undefined) throw new UsageError(`--${name} is given twice. ${help}`);
    else values[name] = value;
  }
  return values;
}

function configOptions(v: Values): ConfigOptions {
  const overrides: Override[] = [];
  const str = (name: string) => typeof v[name] === "string" ? v[name] as string : undefined;
  const engines = str("engines");
  if (engines !== undefined) {
    overrides.push({
      path: ["engines"],
      value: engines.split(",").map((s) => s.trim()),
      flag: "--engines",
    });
  }
  const scalar = (flag: string, path: string[]) => {
    const value = str(flag);
    if (value !== undefined) overrides.push({ path, value, flag: `--${flag}` });
  };
  scalar("active", ["active"]);
  scalar("gpu", ["gpu"]);
  scalar("model-cache", ["model_cache"]);
  scalar("hf-token-secret", ["secrets", "HF_TOKEN"]);
  for (const [flag, key] of [["model", "model"], ["image", "image"]] as const) {
    for (const pair of (v[flag] as string[] | undefined) ?? []) {
      const eq = pair.indexOf("=");
      if (eq <= 0) {
        throw new UsageError(
          `--${flag} takes ENGINE=VALUE (e.g. --${flag} vllm=...), got "${pair}"`,
        );
      }
      overrides.push({
        path: ["cartridges", pair.slice(0, eq), key],
        value: pair.slice(eq + 1),
        flag: `--${flag} ${pair.slice(0, eq)}=...`,
      });
    }
  }
  return { system: v.system === true, configPath: str("config") ?? null, overrides };
}
