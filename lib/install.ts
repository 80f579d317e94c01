/**
 * The machinery `init`, `render` and `swap` share: config -> plan -> what it would change on disk
 * (`prepare`), writing it (`installUnits`), and lychd's lock (`withLock`).
 */
import { applyChanges, conflictError, diffPlan, readManifest } from "./apply.ts";
import type { ConfigOptions } from "./cli.ts";
import { loadConfig } from "./config/load.ts";
import { LychdError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { Locations } from "./paths.ts";
import type { Root } from "./plan.ts";

/** How long a command waits for another lychd holding the lock (init, swap). */
const LOCK_TIMEOUT_MS = 10 * 60 * 1000;

/**
 * Run `fn` holding lychd's lock for this mode, so that two inits or swaps never interleave.
 * The lock is an flock on <data>/lychd.lock: the kernel drops it when its holder dies, so a
 * killed lychd never leaves a stale lock behind.
 */
export async function withLock<T>(host: Host, loc: Locations, fn: () => Promise<T>): Promise<T> {
  await host.mkdirp(loc.dataDir, 0o755);
  let release: () => void;
  try {
    release = await host.lock(
      `${loc.dataDir}/lychd.lock`,
      LOCK_TIMEOUT_MS,
      () =>
        host.err("Another lychd command (init or swap) is running; waiting for it to finish...\n"),
    );
  } catch (e) {
    if (e instanceof Deno.errors.TimedOut) {
      throw new LychdError(
        `Another lychd command kept the lock too long (${e.message}); try again later.`,
      );
    }
    throw e;
  }
  try {
    return await fn();
  } finally {
    release();
  }
}

/**
 * Re-render and write the units with some keys changed (swap: `active`), then daemon-reload if
 * anything changed. Refuses, writing nothing, if a file was edited.
 */
export async function installUnits(
  host: Host,
  loc: Locations,
  configOptions: ConfigOptions,
): Promise<{ changed: boolean }> {
  const { changes, manifest, manifestPath } = await prepare(host, loc, configOptions, {
    quadlet: loc.quadletDir,
    data: loc.dataDir,
    config: null,
  }, false);
  const conflict = conflictError(changes);
  if (conflict) {
    throw new LychdError(`${conflict.message}\nRun \`lychd init\` to see and resolve this first.`);
  }
  const changed = changes.some((c) => ["create", "update", "remove"].includes(c.action));
  if (!changed) return { changed };
  await applyChanges(changes, manifest, manifestPath, host);
  const r = await host.run("systemctl", [...loc.systemctlScope, "daemon-reload"]);
  if (r.code !== 0) {
    throw new LychdError(
      `\`${systemctlLine(loc, "daemon-reload")}\` failed: ${r.stderr.trim() || `exit ${r.code}`}`,
    );
  }
  return { changed };
}

export async function prepare(
  host: Host,
  loc: Locations,
  configOptions: ConfigOptions,
  roots: { quadlet: string; data: string; config: string | null },
  force: boolean,
  manifestPath = `${loc.dataDir}/manifest.json`,
) {
  const loaded = await loadConfig(host, loc, configOptions);
  // Loaded lazily: Nunjucks costs ~130 ms of start-up that --help and --version should not pay.
  const { buildPlan } = await import("./plan.ts");
  const plan = buildPlan(loaded.config, loc, loaded.configText);
  const configDir = loaded.configPath.slice(0, loaded.configPath.lastIndexOf("/"));
  const rootDirs: Record<Root, string> = {
    quadlet: roots.quadlet,
    data: roots.data,
    config: roots.config ?? configDir,
  };
  if (roots.config !== null) {
    // render: the config file goes into the output folder under its usual name.
    plan.files = plan.files.map((f) => f.root === "config" ? { ...f, path: "lychd.yaml" } : f);
  } else {
    const name = loaded.configPath.slice(loaded.configPath.lastIndexOf("/") + 1);
    plan.files = plan.files.map((f) => f.root === "config" ? { ...f, path: name } : f);
  }
  const manifest = await readManifest(host, manifestPath);
  const changes = await diffPlan(plan, rootDirs, manifest, host, force);
  return { changes, loaded: { ...loaded, plan }, manifestPath, manifest };
}

export function systemctlLine(loc: Locations, args: string): string {
  return ["systemctl", ...loc.systemctlScope, args].join(" ");
}
