/**
 * Untrusted config data (lychd.yaml merged with flags) -> LychdConfig, or every problem found.
 * Pure. Each rule rejects anything that could break out of the line or value it lands in inside
 * a unit file; what passes is escaped when rendered (lib/unit_syntax.ts).
 */
import {
  BUILTIN_NAMES,
  builtinCartridge,
  DEFAULT_ENGINES,
  type Network,
  SLEEP_FLAGS,
  SLEEP_LEVELS,
  STANDARD_PORT,
} from "../engines.ts";
import { ConfigError, type Problem } from "../errors.ts";
import type {
  CartridgeSettings,
  GateSettings,
  GpuSpec,
  LychdConfig,
  SleepApi,
  SleepLevel,
} from "./types.ts";
import { CONTROL_CHARACTER, hostPathProblem } from "../unit_syntax.ts";
import type { KeyPath } from "./yaml.ts";
import { suggest } from "../suggest.ts";
import { parseDuration } from "../duration.ts";

export { parseDuration };

export const ENGINE_NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
const ENGINE_NAME_MAX = 32;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SECRET_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;
const URL_PATH = /^\/[A-Za-z0-9._~\/-]*$/;
const PROM_DURATION = /^[1-9][0-9]*(ms|s|m|h)$/;
const PROM_RETENTION = /^[1-9][0-9]*(h|d|w|y)$/;
const VALUE_MAX = 4096;

const TOP_KEYS = [
  "engines",
  "active",
  "gpu",
  "model_cache",
  "offline",
  "secrets",
  "harvester",
  "scribe",
  "gate",
  "cartridges",
] as const;
const CARTRIDGE_KEYS = [
  "image",
  "model",
  "args",
  "env",
  "secrets",
  "gpu",
  "start_timeout",
  "stop_timeout",
  "port",
  "health_path",
  "metrics_path",
  "warmup",
  "caches",
  "sleep",
  "sleep_api",
  "network",
] as const;
const CUSTOM_ONLY_KEYS = ["port", "health_path", "metrics_path", "sleep_api"];
const HARVESTER_KEYS = ["image", "scrape_interval", "retention"] as const;
const SCRIBE_KEYS = ["image"] as const;
const GATE_KEYS = [
  "enabled",
  "engine_port",
  "listen",
  "api_keys_file",
  "hold_timeout",
  "max_held",
  "drain_timeout",
  "on_demand",
  "min_residency",
  "max_asleep",
] as const;

/** Whether lychd.yaml without a gate key gets the gate (docs/gate.md). */
export const GATE_BY_DEFAULT = true;

export const DEFAULT_GATE: GateSettings = {
  enabled: GATE_BY_DEFAULT,
  enginePort: 18081,
  listen: "loopback",
  apiKeysFile: null,
  holdTimeoutSec: null,
  maxHeld: 256,
  drainTimeoutSec: 30,
  onDemand: false,
  minResidencySec: 60,
  maxAsleep: 2,
};
/** Ports lychd's other listeners hold: the gate, the harvester, the scribe. */
const TAKEN_PORTS = [8081, 9090, 3000];

export const DEFAULT_START_TIMEOUT_SEC = 15 * 60;
export const DEFAULT_STOP_TIMEOUT_SEC = 30;

/** Where the active engine answers on this host (the gate's upstream when the gate is on). */
export function enginePort(config: LychdConfig): number {
  return config.gate.enabled ? config.gate.enginePort : STANDARD_PORT;
}

/**
 * The loopback port lychd reaches an engine on. The engines that stop share the engine port (one
 * runs at a time); one asleep keeps its process and its port, so each one that sleeps has a port
 * of its own after it, in the order of engines:.
 */
export function engineHostPort(config: LychdConfig, name: string): number {
  // -1 for an engine that does not sleep: the engine port itself.
  const sleeper = config.engines.filter((n) => config.cartridges[n]?.sleep).indexOf(name);
  return enginePort(config) + 1 + sleeper;
}

/** Settings of a cartridge the config says nothing about. */
export function defaultSettings(name: string): CartridgeSettings {
  return {
    image: null,
    model: null,
    args: [],
    env: {},
    secrets: {},
    gpu: null,
    startTimeoutSec: DEFAULT_START_TIMEOUT_SEC,
    stopTimeoutSec: builtinCartridge(name)?.stopTimeoutSec ?? DEFAULT_STOP_TIMEOUT_SEC,
    port: null,
    healthPath: null,
    metricsPath: null,
    warmup: builtinCartridge(name) !== undefined,
    caches: [],
    sleep: null,
    network: null,
    sleepApi: null,
  };
}

/** Where each problem is reported: a flag name if a flag set the key, else file:line:col. */
export type Locator = (path: KeyPath, atKey?: boolean) => string | undefined;

export function validateConfig(data: unknown, locate: Locator): LychdConfig {
  const v = new Validator(locate);
  const config = v.config(data);
  if (v.problems.length > 0) throw new ConfigError(v.problems);
  return config;
}

class Validator {
  problems: Problem[] = [];
  constructor(private locate: Locator) {}

  /** Record a problem; `atKey` points at the key rather than its value (unknown keys). */
  fail(path: KeyPath, message: string, atKey = false): null {
    const where = this.locate(path, atKey);
    this.problems.push({ where, key: path.join(".") || "(top level)", message });
    return null;
  }

  config(data: unknown): LychdConfig {
    const top = this.map(data, [], TOP_KEYS) ?? {};
    const cartridgesRaw = this.map(top.cartridges ?? {}, ["cartridges"], null) ?? {};
    const cartridges: Record<string, CartridgeSettings> = {};
    for (const [name, raw] of Object.entries(cartridgesRaw)) {
      if (!this.engineName(name, ["cartridges", name])) continue;
      const c = this.cartridge(raw ?? {}, ["cartridges", name], name);
      if (c) cartridges[name] = c;
    }
    const engines = this.engineList(top.engines, cartridges);
    const active = top.active === undefined || top.active === null
      ? engines[0]
      : this.string(top.active, ["active"]);
    if (active !== null && active !== undefined && !engines.includes(active)) {
      this.fail(["active"], `"${active}" is not one of engines (${engines.join(", ")})`);
    }
    const harvester = this.map(top.harvester ?? {}, ["harvester"], HARVESTER_KEYS) ?? {};
    const scribe = this.map(top.scribe ?? {}, ["scribe"], SCRIBE_KEYS) ?? {};
    const config: LychdConfig = {
      engines,
      active: active ?? engines[0],
      gpu: this.gpu(top.gpu ?? "nvidia", ["gpu"]) ?? { vendor: "nvidia", devices: [] },
      modelCache: top.model_cache === undefined || top.model_cache === null
        ? null
        : this.hostPath(top.model_cache, ["model_cache"]),
      offline: this.boolean(top.offline ?? false, ["offline"]) ?? false,
      secrets: this.secrets(top.secrets ?? {}, ["secrets"]),
      harvester: {
        image: this.optionalImage(harvester.image, ["harvester", "image"]),
        scrapeInterval: this.pattern(
          harvester.scrape_interval ?? "5s",
          ["harvester", "scrape_interval"],
          PROM_DURATION,
          "a Prometheus duration such as 5s, 15s or 1m",
        ) ?? "5s",
        retention: this.pattern(
          harvester.retention ?? "15d",
          ["harvester", "retention"],
          PROM_RETENTION,
          "a Prometheus retention such as 15d, 12h or 4w",
        ) ?? "15d",
      },
      scribe: { image: this.optionalImage(scribe.image, ["scribe", "image"]) },
      gate: this.gate(top.gate),
      cartridges,
    };
    this.sleepers(config);
    this.hostNetworks(config);
    return config;
  }

  /**
   * On the host's network an engine listens where lychd reaches it (docs/engines.md, "The
   * engine's network"): a built-in is told --host 127.0.0.1 and --port, which its args must not
   * undo; a custom engine's port must be that port, since lychd cannot tell it where to listen.
   */
  hostNetworks(config: LychdConfig): void {
    for (const name of config.engines) {
      const settings = config.cartridges[name] ?? defaultSettings(name);
      if (settings.network !== "host") continue;
      const builtin = builtinCartridge(name);
      const port = engineHostPort(config, name);
      if (builtin) {
        settings.args.forEach((arg, i) => {
          // vLLM's and SGLang's argparse take an abbreviation (`--hos`, `--por=9000`) as the flag.
          const word = arg.split("=")[0];
          const flag = word.length >= 3 && ["--host", "--port"].find((f) => f.startsWith(word));
          if (!flag) return;
          this.fail(
            ["cartridges", name, "args", String(i)],
            `${arg} (${flag}): on the host's network lychd makes ${builtin.title} listen on ` +
              `127.0.0.1:${port} (another address would expose it beyond this host, another ` +
              `port would not be reached); remove it from args`,
          );
        });
      } else if (settings.port !== null && settings.port !== port) {
        this.fail(
          ["cartridges", name, "port"],
          `${settings.port}: with network: host the engine listens on the host itself, where ` +
            `lychd reaches it: port must be ${port} (${
              config.gate.enabled ? "gate.engine_port" : `${STANDARD_PORT} without the gate`
            }${settings.sleep ? ", plus its place among the engines that sleep" : ""}), and ` +
            `its args must bind it to 127.0.0.1`,
        );
      }
    }
  }

  /** Engines that sleep need an API to sleep with, and the gate (docs/warm-swaps.md). */
  sleepers(config: LychdConfig): void {
    const sleepers = config.engines.filter((n) => config.cartridges[n]?.sleep);
    for (const name of sleepers) {
      const path = ["cartridges", name, "sleep"];
      const builtin = builtinCartridge(name);
      if (builtin && builtin.sleepApi === null) {
        this.fail(path, `${builtin.title} cannot be put to sleep by lychd: ${builtin.noSleep}`);
      } else if (!builtin && config.cartridges[name].sleepApi === null) {
        this.fail(
          path,
          `custom engine "${name}" needs sleep_api: vllm or sglang beside sleep (the routes ` +
            "it speaks)",
        );
      } else if (!config.gate.enabled) {
        this.fail(
          path,
          "needs the gate (gate: true): an engine asleep keeps its port, and only the gate " +
            "sends each request to the one awake",
        );
      }
      // lychd sets what the sleep routes need; a value of the user's would silently remove them.
      const api = builtin?.sleepApi ?? config.cartridges[name].sleepApi;
      const level = config.cartridges[name].sleep!;
      if (api && !SLEEP_LEVELS[api].levels.includes(level)) {
        this.fail(path, `level ${level} is not offered: ${SLEEP_LEVELS[api].why} (use sleep: 1)`);
      }
      const env = config.cartridges[name].env ?? {};
      for (const [key, value] of Object.entries(api ? SLEEP_FLAGS[api].env : {})) {
        if (key in env && env[key] !== value) {
          this.fail(
            ["cartridges", name, "env", key],
            `lychd sets ${key}=${value} for an engine that sleeps (its sleep routes exist only ` +
              `then); remove ${key} from env`,
          );
        }
      }
    }
    // Each sleeper listens on a port of its own after the gate's engine port.
    const last = config.gate.enginePort + sleepers.length;
    const taken = TAKEN_PORTS.filter((p) => p > config.gate.enginePort && p <= last);
    if (sleepers.length > 0 && (taken.length > 0 || last > 65535)) {
      this.fail(
        ["gate", "engine_port"],
        `${config.gate.enginePort}: the ${sleepers.length} engines that sleep take the ports ` +
          `after it, up to ${last}, which ${
            taken.length ? `includes ${taken.join(", ")} (lychd's)` : "is past 65535"
          }; choose another engine_port`,
      );
    }
  }

  /** `gate: false`, `gate: true`, or a mapping of its settings. */
  gate(raw: unknown): GateSettings {
    if (raw === undefined || raw === null) return { ...DEFAULT_GATE };
    if (raw === true) return { ...DEFAULT_GATE, enabled: true };
    if (raw === false) return { ...DEFAULT_GATE, enabled: false };
    const path = ["gate"];
    if (!isPlainObject(raw)) {
      this.fail(
        path,
        `expected true, false or a mapping of the gate's settings, got ${describe(raw)}`,
      );
      return { ...DEFAULT_GATE };
    }
    const m = this.map(raw, path, GATE_KEYS) ?? {};
    const opt = <T>(key: string, check: (v: unknown, p: KeyPath) => T | null): T | null =>
      m[key] === undefined || m[key] === null ? null : check(m[key], [...path, key]);
    const d = DEFAULT_GATE;
    const enginePort = opt("engine_port", (v, p) => {
      const port = this.port(v, p);
      if (port === null) return null;
      if (port < 1024) return this.fail(p, `${port} is a privileged port; use 1024-65535`);
      if (TAKEN_PORTS.includes(port)) {
        return this.fail(
          p,
          `${port} is taken by lychd itself (8081 gate, 9090 harvester, 3000 scribe)`,
        );
      }
      return port;
    }) ?? d.enginePort;
    const listen = opt(
      "listen",
      (v, p) =>
        v === "loopback" || v === "all"
          ? v
          : this.fail(p, `${JSON.stringify(v)} is not loopback (127.0.0.1) or all (0.0.0.0)`),
    ) ??
      d.listen;
    const apiKeysFile = opt("api_keys_file", (v, p) => {
      const s = this.hostPath(v, p);
      return s === null || s.startsWith("/") ? s : this.fail(p, "expected an absolute path");
    });
    if (listen === "all" && apiKeysFile === null && m.api_keys_file === undefined) {
      this.fail(
        [...path, "listen"],
        "listening on every address needs API keys: set gate.api_keys_file to a file of keys " +
          "(one per line, mode 0600)",
      );
    }
    const maxHeld = opt(
      "max_held",
      (v, p) =>
        typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 100_000
          ? v
          : this.fail(p, `${JSON.stringify(v)} is not a number of requests (0-100000)`),
    ) ?? d.maxHeld;
    return {
      enabled: opt("enabled", (v, p) => this.boolean(v, p)) ?? true,
      enginePort,
      listen,
      apiKeysFile,
      holdTimeoutSec: opt("hold_timeout", (v, p) => this.duration(v, p)),
      maxHeld,
      drainTimeoutSec: opt("drain_timeout", (v, p) => this.duration(v, p)) ?? d.drainTimeoutSec,
      onDemand: opt("on_demand", (v, p) => this.boolean(v, p)) ?? d.onDemand,
      minResidencySec: opt("min_residency", (v, p) => this.duration(v, p)) ?? d.minResidencySec,
      maxAsleep: opt(
        "max_asleep",
        (v, p) =>
          typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 64
            ? v
            : this.fail(p, `${JSON.stringify(v)} is not a number of engines asleep (0-64)`),
      ) ?? d.maxAsleep,
    };
  }

  engineList(raw: unknown, cartridges: Record<string, CartridgeSettings>): string[] {
    if (raw === undefined || raw === null) return [...DEFAULT_ENGINES];
    if (!Array.isArray(raw) || raw.length === 0) {
      this.fail(
        ["engines"],
        "expected a non-empty list of engine names, e.g. [vllm, sglang, llama]",
      );
      return [...DEFAULT_ENGINES];
    }
    const out: string[] = [];
    raw.forEach((name, i) => {
      const path = ["engines", i];
      if (typeof name !== "string") return this.fail(path, "expected an engine name (a string)");
      if (!this.engineName(name, path)) return;
      if (out.includes(name)) return this.fail(path, `"${name}" is listed twice`);
      if (!builtinCartridge(name) && !cartridges[name]) {
        const hint = suggest(name, [...BUILTIN_NAMES, ...Object.keys(cartridges)]);
        return this.fail(
          path,
          `unknown engine "${name}"${hint}; built in: ${BUILTIN_NAMES.join(", ")}` +
            ` (a custom engine needs an entry under cartridges with image and port)`,
        );
      }
      out.push(name);
    });
    return out.length > 0 ? out : [...DEFAULT_ENGINES];
  }

  engineName(name: string, path: KeyPath): boolean {
    if (name.length > ENGINE_NAME_MAX || !ENGINE_NAME.test(name)) {
      this.fail(
        path,
        `engine name ${JSON.stringify(name)} is not allowed: use lowercase letters, digits and ` +
          `single dashes, starting with a letter, at most ${ENGINE_NAME_MAX} characters`,
      );
      return false;
    }
    return true;
  }

  cartridge(raw: unknown, path: KeyPath, name: string): CartridgeSettings | null {
    const m = this.map(raw, path, CARTRIDGE_KEYS);
    if (!m) return null;
    const builtin = builtinCartridge(name);
    if (builtin) {
      for (const k of CUSTOM_ONLY_KEYS) {
        if (m[k] !== undefined) {
          this.fail([...path, k], `is fixed for the built-in engine "${name}" and cannot be set`);
        }
      }
    } else {
      if (m.image === undefined) {
        this.fail([...path, "image"], `custom engine "${name}" needs an image`);
      }
      if (m.port === undefined) {
        this.fail([...path, "port"], `custom engine "${name}" needs the port it listens on`);
      }
    }
    const opt = <T>(key: string, check: (v: unknown, p: KeyPath) => T | null): T | null =>
      m[key] === undefined || m[key] === null ? null : check(m[key], [...path, key]);
    return {
      image: opt("image", (v, p) => this.image(v, p)),
      model: opt("model", (v, p) => this.model(v, p)),
      args: opt("args", (v, p) => this.args(v, p)) ?? [],
      env: opt("env", (v, p) => this.env(v, p)) ?? {},
      secrets: opt("secrets", (v, p) => this.secrets(v, p)) ?? {},
      gpu: opt("gpu", (v, p) => this.gpu(v, p)),
      startTimeoutSec: opt("start_timeout", (v, p) => this.duration(v, p)) ??
        DEFAULT_START_TIMEOUT_SEC,
      stopTimeoutSec: opt("stop_timeout", (v, p) => this.duration(v, p)) ??
        builtin?.stopTimeoutSec ?? DEFAULT_STOP_TIMEOUT_SEC,
      port: opt("port", (v, p) => this.port(v, p)),
      healthPath: opt(
        "health_path",
        (v, p) => this.pattern(v, p, URL_PATH, "a URL path like /health"),
      ),
      metricsPath: opt(
        "metrics_path",
        (v, p) => this.pattern(v, p, URL_PATH, "a URL path like /metrics"),
      ),
      // A custom engine may not speak /v1/completions: warm-up is for it to opt into.
      warmup: opt("warmup", (v, p) => this.boolean(v, p)) ?? builtin !== undefined,
      caches: opt("caches", (v, p) => this.caches(v, p)) ?? [],
      sleep: opt("sleep", (v, p) => this.sleepLevel(v, p)),
      sleepApi: opt("sleep_api", (v, p) => this.sleepApi(v, p)),
      network: opt("network", (v, p) => this.network(v, p)),
    };
  }

  network(raw: unknown, path: KeyPath): Network | null {
    if (raw === "host" || raw === "private") return raw;
    return this.fail(
      path,
      `expected host (the host's own network, bound to 127.0.0.1) or private (a network of its ` +
        `own, one port published on 127.0.0.1), got ${describe(raw)}`,
    );
  }

  /** `sleep: 1`, `sleep: 2` or `sleep: false`. */
  sleepLevel(raw: unknown, path: KeyPath): SleepLevel | null {
    if (raw === false) return null;
    if (raw === 1 || raw === 2) return raw;
    return this.fail(
      path,
      `expected 1 (weights kept in host RAM), 2 (weights dropped) or false, got ${describe(raw)}`,
    );
  }

  sleepApi(raw: unknown, path: KeyPath): SleepApi | null {
    if (raw === "vllm" || raw === "sglang") return raw;
    return this.fail(
      path,
      "expected vllm (the engine speaks vLLM's /sleep, /wake_up and /is_sleeping) or sglang " +
        `(SGLang's /release_memory_occupation and /resume_memory_occupation), got ${describe(raw)}`,
    );
  }

  /** A mapping whose keys are all in `known` (null = any key). */
  map(
    raw: unknown,
    path: KeyPath,
    known: readonly string[] | null,
  ): Record<string, unknown> | null {
    if (!isPlainObject(raw)) {
      return this.fail(path, `expected a mapping (key: value), got ${describe(raw)}`);
    }
    if (known) {
      for (const key of Object.keys(raw)) {
        if (!known.includes(key)) {
          this.fail(
            [...path, key],
            `unknown key${suggest(key, known)}; expected one of: ${known.join(", ")}`,
            true,
          );
        }
      }
    }
    return raw;
  }

  string(raw: unknown, path: KeyPath, max = VALUE_MAX): string | null {
    if (typeof raw === "number" || typeof raw === "boolean") raw = String(raw);
    if (typeof raw !== "string") return this.fail(path, `expected a string, got ${describe(raw)}`);
    if (raw.length === 0) return this.fail(path, "must not be empty");
    if (raw.length > max) {
      return this.fail(path, `is ${raw.length} characters long; at most ${max}`);
    }
    // A control character (newline above all) would start a new line, hence a new key, in a unit.
    const bad = raw.match(CONTROL_CHARACTER);
    if (bad) {
      return this.fail(
        path,
        `contains the control character ${JSON.stringify(bad[0])}: not allowed in a unit file`,
      );
    }
    return raw;
  }

  boolean(raw: unknown, path: KeyPath): boolean | null {
    return typeof raw === "boolean"
      ? raw
      : this.fail(path, `expected true or false, got ${describe(raw)}`);
  }

  pattern(raw: unknown, path: KeyPath, re: RegExp, expected: string): string | null {
    const s = this.string(raw, path);
    if (s === null) return null;
    return re.test(s) ? s : this.fail(path, `${JSON.stringify(s)} is not ${expected}`);
  }

  model(raw: unknown, path: KeyPath): string | null {
    const s = this.string(raw, path, 512);
    if (s === null) return null;
    if (s.startsWith("-")) {
      return this.fail(path, `${JSON.stringify(s)} starts with "-": it would be read as an option`);
    }
    // A local model file is mounted into the container at its own path (Volume=).
    const problem = s.startsWith("/") ? hostPathProblem(s, true) : null;
    if (problem) return this.fail(path, `a local model file's path ${problem}`);

    return s;
  }

  args(raw: unknown, path: KeyPath): string[] | null {
    if (!Array.isArray(raw)) {
      return this.fail(
        path,
        `expected a list of arguments, e.g. ["--max-model-len", "8192"], got ${describe(raw)}`,
      );
    }
    const out: string[] = [];
    raw.forEach((a, i) => {
      const s = this.string(a, [...path, i]);
      if (s !== null) out.push(s);
    });
    return out;
  }

  env(raw: unknown, path: KeyPath): Record<string, string> | null {
    const m = this.map(raw, path, null);
    if (!m) return null;
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(m)) {
      if (!ENV_NAME.test(k)) {
        this.fail(
          [...path, k],
          "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
        );
        continue;
      }
      if (/TOKEN|PASSWORD|SECRET|API_KEY/i.test(k)) {
        this.fail(
          [...path, k],
          "looks like a secret: secrets never go into unit files. Create a Podman secret " +
            `(printf %s "$VALUE" | podman secret create NAME -) and set secrets: {${k}: NAME}`,
        );
        continue;
      }
      const s = this.string(v, [...path, k]);
      if (s !== null) out[k] = s;
    }
    return out;
  }

  secrets(raw: unknown, path: KeyPath): Record<string, string> {
    const m = this.map(raw, path, null);
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(m ?? {})) {
      if (!ENV_NAME.test(k)) {
        this.fail(
          [...path, k],
          "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
        );
        continue;
      }
      const s = this.pattern(v, [...path, k], SECRET_NAME, "a Podman secret name ([A-Za-z0-9_.-])");
      if (s !== null) out[k] = s;
    }
    return out;
  }

  gpu(raw: unknown, path: KeyPath): GpuSpec | null {
    const s = this.string(raw, path);
    if (s === null) return null;
    const m = s.match(/^(nvidia|amd|cpu)(?::(.*))?$/);
    if (!m) {
      return this.fail(
        path,
        `"${s}" is not a GPU choice: nvidia, nvidia:0,1 (chosen GPUs), amd or cpu`,
      );
    }
    const vendor = m[1] as GpuSpec["vendor"];
    if (m[2] === undefined) return { vendor, devices: [] };
    if (vendor !== "nvidia") {
      return this.fail(path, `GPU indexes can only be chosen for nvidia, not ${vendor}`);
    }
    const devices = m[2].split(",");
    if (devices.some((d) => !/^[0-9]{1,3}$/.test(d)) || new Set(devices).size !== devices.length) {
      return this.fail(path, `"${m[2]}" is not a list of distinct GPU indexes like 0,1`);
    }
    return { vendor, devices };
  }

  duration(raw: unknown, path: KeyPath): number | null {
    const seconds = parseDuration(raw);
    if (seconds === null || seconds < 1 || seconds > 24 * 3600) {
      return this.fail(
        path,
        `${JSON.stringify(raw)} is not a duration between 1s and 24h (e.g. 90s, 15m, 1h30m)`,
      );
    }
    return seconds;
  }

  port(raw: unknown, path: KeyPath): number | null {
    if (typeof raw !== "number" || !Number.isInteger(raw) || raw < 1 || raw > 65535) {
      return this.fail(path, `${JSON.stringify(raw)} is not a port number (1-65535)`);
    }
    return raw;
  }

  /** Folders inside the container to keep across restarts: absolute, distinct, no `..`. */
  caches(raw: unknown, path: KeyPath): string[] | null {
    if (!Array.isArray(raw)) {
      return this.fail(
        path,
        `expected a list of folders inside the container, e.g. ["/root/.triton"], got ${
          describe(raw)
        }`,
      );
    }
    const out: string[] = [];
    raw.forEach((p, i) => {
      const s = this.hostPath(p, [...path, i]);
      if (s === null) return;
      if (s.split("/").some((part) => part === "." || part === "..") || s === "/") {
        this.fail([...path, i], `${JSON.stringify(s)}: expected a folder without . or .. parts`);
      } else if (out.includes(s)) this.fail([...path, i], `${JSON.stringify(s)} is listed twice`);
      else out.push(s.replace(/\/+$/, ""));
    });
    return out;
  }

  hostPath(raw: unknown, path: KeyPath): string | null {
    const s = this.string(raw, path, 1024);
    if (s === null) return null;
    const problem = hostPathProblem(s);
    if (problem) return this.fail(path, `${JSON.stringify(s)} ${problem}`);
    return s;
  }

  image(raw: unknown, path: KeyPath): string | null {
    const s = this.string(raw, path, 512);
    if (s === null) return null;
    const problem = imageProblem(s);
    return problem ? this.fail(path, problem) : s;
  }

  optionalImage(raw: unknown, path: KeyPath): string | null {
    return raw === undefined || raw === null ? null : this.image(raw, path);
  }
}

const IMAGE_REF =
  /^([a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?)((\/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+)(:([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(@sha256:[a-f0-9]{64})?$/;

/** Why `ref` is not a fully-qualified, pinned image reference; null if it is one. */
export function imageProblem(ref: string): string | null {
  const m = ref.match(IMAGE_REF);
  if (!m) {
    return `${
      JSON.stringify(ref)
    } is not an image reference like docker.io/vllm/vllm-openai:v0.33.0`;
  }
  const registry = m[1];
  if (!registry.includes(".") && !registry.includes(":") && registry !== "localhost") {
    return `${JSON.stringify(ref)} must name its registry (e.g. docker.io/${ref}): ` +
      "short names resolve differently from host to host";
  }
  const tag = m[9];
  const digest = m[10];
  if (!digest && (!tag || tag === "latest")) {
    return `${JSON.stringify(ref)} is not pinned: give a version tag or a digest, not latest`;
  }
  return null;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return "nothing (null)";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `${typeof v} ${JSON.stringify(v)}`;
}
