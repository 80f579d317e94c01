/**
 * lychd.yaml + flags -> a validated config, and the text lychd.yaml should have afterwards.
 * The file is read through the Host; everything else is pure.
 */
import { builtinCartridge } from "../engines.ts";
import { ConfigError, LychdError } from "../errors.ts";
import type { Host } from "../host.ts";
import type { LychdConfig } from "./types.ts";
import { isPlainObject, validateConfig } from "./validate.ts";
import { type KeyPath, type Override, parseConfigText, updateConfigText } from "./yaml.ts";

export interface LoadedConfig {
  config: LychdConfig;
  configPath: string;
  /** What lychd.yaml should contain after this run (equal to the file if nothing changed). */
  configText: string;
  /** The file as it is now; null if it does not exist yet. */
  originalText: string | null;
}

/**
 * Read and validate lychd.yaml (the one the command's setup chose) with `overrides` applied. Only `init` may start from
 * a file that does not exist yet (it writes the first one); for every other command a missing
 * file is an error, never a silent fall-back to the defaults.
 */
export async function loadConfig(
  host: Host,
  configPath: string,
  overrides: Override[],
  allowMissing: boolean,
): Promise<LoadedConfig> {
  const text = await readConfigText(host, configPath);
  if (text === null && !allowMissing) {
    throw new LychdError(
      `${configPath} does not exist, but lychd's units here were rendered from it. Put it ` +
        "back, or run `lychd init --force` to render them from the defaults and your flags.",
    );
  }
  return resolveConfig(text, configPath, overrides);
}

/** lychd.yaml's text, or null if there is none; errors say what to do, not how Deno failed. */
export async function readConfigText(host: Host, path: string): Promise<string | null> {
  let bytes: Uint8Array | null;
  try {
    bytes = await host.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable) {
      throw new LychdError(
        `${path}: lychd may not read files there (its permission set is fixed in the binary). ` +
          'Keep lychd.yaml under your home folder, /tmp or /etc/lychd (README, "Permissions").',
        2,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new LychdError(`${path}: permission denied (${(e as Error).message})`, 2);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new LychdError(`${path} is a folder; --config takes lychd.yaml's file path`, 2);
    }
    throw e;
  }
  if (bytes === null) return null;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ConfigError([{ where: path, key: "(file)", message: "is not valid UTF-8" }]);
  }
}

/** Pure core of loadConfig: file text (or null) + overrides -> config and new file text. */
export function resolveConfig(
  text: string | null,
  configPath: string,
  overrides: Override[],
): LoadedConfig {
  const parsed = text === null
    ? { data: {}, locate: () => `${configPath} (not created yet)` }
    : parseConfigText(text, configPath);
  const data = structuredClone(parsed.data);
  for (const o of overrides) setIn(data, o.path, o.value);
  const locate = (path: KeyPath, atKey?: boolean) => {
    const flag = overrides.find((o) => isPrefix(o.path, path) || isPrefix(path, o.path));
    return flag ? flag.flag : parsed.locate(path, atKey);
  };
  const config = validateConfig(data, locate);
  const configText = text === null
    ? updateConfigText(null, firstConfig(config, overrides))
    : updateConfigText(text, overrides);
  return { config, configPath, configText, originalText: text };
}

/** The first lychd.yaml spells out what was used, so the user sees what there is to change. */
function firstConfig(config: LychdConfig, overrides: Override[]): Override[] {
  const gpu = config.gpu.vendor +
    (config.gpu.devices.length ? `:${config.gpu.devices.join(",")}` : "");
  const out: Override[] = [
    { path: ["engines"], value: config.engines, flag: "" },
    { path: ["active"], value: config.active, flag: "" },
    { path: ["gpu"], value: gpu, flag: "" },
  ];
  for (const o of overrides) {
    if (!out.some((x) => isPrefix(x.path, o.path))) out.push(o);
  }
  for (const name of config.engines) {
    const cartridge = builtinCartridge(name);
    const path = ["cartridges", name, "model"];
    if (cartridge && !out.some((x) => isPrefix(x.path, path) && x.path.length === 3)) {
      out.push({ path, value: config.cartridges[name]?.model ?? cartridge.defaultModel, flag: "" });
    }
  }
  return out;
}

function isPrefix(prefix: KeyPath, path: KeyPath): boolean {
  return prefix.length <= path.length && prefix.every((k, i) => String(k) === String(path[i]));
}

/** Set a nested key, creating maps on the way; a non-map in the way is left for validation. */
function setIn(data: unknown, path: KeyPath, value: unknown): void {
  let node = data;
  for (const key of path.slice(0, -1)) {
    if (!isPlainObject(node)) return;
    if ((node as Record<string, unknown>)[key] === undefined || node[key] === null) node[key] = {};
    node = node[key];
  }
  if (isPlainObject(node)) node[path[path.length - 1]] = value;
  else if (path.length === 0) {
    throw new ConfigError([{ key: "(top level)", message: "not a mapping" }]);
  }
}
