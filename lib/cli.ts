/**
 * argv -> a typed Command. Pure: no I/O, no Deno.* (the pkgx way), tested on its own.
 * Flags that change the configuration become Overrides on lychd.yaml's keys, so that flags
 * and the file go through one validation (lib/config/validate.ts).
 */
import { parseArgs } from "node:util";
import type { Override } from "./config/yaml.ts";
import { UsageError } from "./errors.ts";

export interface ConfigOptions {
  system: boolean;
  /** --config FILE; null = the default location for the mode. */
  configPath: string | null;
  overrides: Override[];
}

export type Command =
  | { kind: "help"; topic: string | null }
  | { kind: "version" }
  | {
    kind: "init";
    config: ConfigOptions;
    dryRun: boolean;
    force: boolean;
    reload: boolean;
  }
  | { kind: "render"; config: ConfigOptions; out: string; force: boolean };

const CONFIG_FLAGS = {
  engines: { type: "string" },
  active: { type: "string" },
  model: { type: "string", multiple: true },
  image: { type: "string", multiple: true },
  gpu: { type: "string" },
  "model-cache": { type: "string" },
  "hf-token-secret": { type: "string" },
  config: { type: "string" },
  system: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export function parseCommand(argv: string[]): Command {
  const [first, ...rest] = argv;
  if (first === undefined || first === "help") return { kind: "help", topic: rest[0] ?? null };
  if (first === "--help" || first === "-h") return { kind: "help", topic: null };
  if (first === "--version" || first === "-V" || first === "version") return { kind: "version" };
  switch (first) {
    case "init": {
      const v = parse(rest, {
        ...CONFIG_FLAGS,
        "dry-run": { type: "boolean" },
        force: { type: "boolean" },
        "no-reload": { type: "boolean" },
      }, "init");
      if (v.help) return { kind: "help", topic: "init" };
      return {
        kind: "init",
        config: configOptions(v),
        dryRun: v["dry-run"] === true,
        force: v.force === true,
        reload: v["no-reload"] !== true,
      };
    }
    case "render": {
      const v = parse(rest, {
        ...CONFIG_FLAGS,
        out: { type: "string" },
        force: { type: "boolean" },
      }, "render");
      if (v.help) return { kind: "help", topic: "render" };
      if (typeof v.out !== "string" || v.out === "") {
        throw new UsageError("render needs --out DIR, the folder to write the files into.");
      }
      return { kind: "render", config: configOptions(v), out: v.out, force: v.force === true };
    }
    default:
      throw new UsageError(`unknown command "${first}". Run \`lychd --help\` for the commands.`);
  }
}

type Values = Record<string, string | boolean | string[] | undefined>;

function parse(args: string[], options: Record<string, unknown>, command: string): Values {
  try {
    const { values, positionals } = parseArgs({
      args,
      // deno-lint-ignore no-explicit-any
      options: options as any,
      strict: true,
      allowPositionals: true,
    });
    if (positionals.length > 0) {
      throw new UsageError(
        `lychd ${command} takes no argument "${positionals[0]}"; see lychd ${command} --help`,
      );
    }
    return values as Values;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message}. See \`lychd ${command} --help\`.`);
  }
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
