/**
 * The machinery `init`, `render` and `swap` share: config -> plan -> what it would change on disk
 * (`prepare`), writing it (`installUnits`), and lychd's lock (`withLock`).
 */
import {
  applyChanges,
  type Change,
  conflictError,
  diffPlan,
  type Manifest,
  type ManifestConfig,
  readManifest,
} from "./apply.ts";
import { type LoadedConfig, resolveConfig } from "./config/load.ts";
import type { Override } from "./config/yaml.ts";
import { LychdError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { Locations } from "./paths.ts";
import type { Plan, Root } from "./plan.ts";
import { lychdLine, type Setup } from "./setup.ts";
import { systemctl } from "./systemctl.ts";

/** How long a command waits for another lychd holding the lock (init, swap). */
const LOCK_TIMEOUT_MS = 10 * 60 * 1000;

/**
 * lychd's lock for this mode, an flock on <data>/lychd.lock: the kernel drops it when its holder
 * dies, so a killed lychd never leaves a stale lock behind.
 */
export function lockPath(loc: Locations): string {
  return `${loc.dataDir}/lychd.lock`;
}

/** Run `fn` holding lychd's lock for this mode, so that two inits or swaps never interleave. */
export async function withLock<T>(host: Host, loc: Locations, fn: () => Promise<T>): Promise<T> {
  await host.mkdirp(loc.dataDir, 0o755);
  let release: () => void;
  try {
    release = await host.lock(
      lockPath(loc),
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

/** What re-rendering would change on disk, and what it was computed from. */
export interface Prepared {
  changes: Change[];
  loaded: LoadedConfig & { plan: Plan };
  manifestPath: string;
  manifest: Manifest;
  /** The manifest's record of lychd.yaml after this run. */
  configRecord: ManifestConfig;
}

/**
 * Re-render the units from the setup's lychd.yaml text with some keys changed (swap: `active`),
 * write them and daemon-reload if anything changed. Refuses, writing nothing, if a file was
 * edited. Returns what changed.
 */
export async function installUnits(
  host: Host,
  setup: Setup,
  text: string,
  overrides: Override[],
): Promise<{ changed: Change[] }> {
  const loaded = resolveConfig(text, setup.configPath, overrides);
  const prepared = await prepare(host, setup, loaded, null, false);
  const conflict = conflictError(prepared.changes);
  if (conflict) {
    throw new LychdError(
      `${conflict.message}\nRun \`${lychdLine(setup, "init")}\` to see and resolve this first.`,
    );
  }
  const changed = prepared.changes.filter((c) => ["create", "update", "remove"].includes(c.action));
  if (changed.length === 0) return { changed };
  await applyChanges(
    prepared.changes,
    prepared.manifest,
    prepared.manifestPath,
    host,
    prepared.configRecord,
  );
  await daemonReload(host, setup.loc);
  return { changed };
}

/**
 * `systemctl daemon-reload`, the one way lychd reloads: a failure is a SystemctlError (with
 * systemd's own words), which each caller turns into its outcome.
 */
export async function daemonReload(host: Host, loc: Locations): Promise<void> {
  await systemctl(host, loc.systemctlScope, "daemon-reload");
}

/**
 * The plan for `loaded` compared with the disk. `outDir` (render) puts the whole set into one
 * folder instead of the real locations.
 */
export async function prepare(
  host: Host,
  setup: Setup,
  loaded: LoadedConfig,
  outDir: string | null,
  force: boolean,
): Promise<Prepared> {
  const loc = setup.loc;
  // Loaded lazily: Nunjucks costs ~130 ms of start-up that --help and --version should not pay.
  const { buildPlan } = await import("./plan.ts");
  const plan = buildPlan(loaded.config, loc, loaded.configText, {
    program: host.lychdProgram(),
    configPath: loaded.configPath,
  });
  const configDir = loaded.configPath.slice(0, loaded.configPath.lastIndexOf("/"));
  const rootDirs: Record<Root, string> = outDir === null
    ? { quadlet: loc.quadletDir, units: loc.unitDir, data: loc.dataDir, config: configDir }
    : {
      quadlet: `${outDir}/quadlet`,
      units: `${outDir}/systemd`,
      data: `${outDir}/data`,
      config: outDir,
    };
  // The config file keeps its own name (render: lychd.yaml in the output folder).
  const name = outDir === null
    ? loaded.configPath.slice(loaded.configPath.lastIndexOf("/") + 1)
    : "lychd.yaml";
  plan.files = plan.files.map((f) => f.root === "config" ? { ...f, path: name } : f);
  const manifestPath = outDir === null ? setup.manifestPath : `${outDir}/.lychd-manifest.json`;
  // Read again, not taken from `setup`: under the lock it is what the last writer left.
  const manifest = await readManifest(host, manifestPath);
  const changes = await diffPlan(plan, rootDirs, manifest, host, force);
  const configPath = `${rootDirs.config}/${name}`;
  const previous = manifest.config?.path === configPath ? manifest.config : null;
  const configRecord = {
    path: configPath,
    writtenByLychd: previous?.writtenByLychd ?? loaded.originalText === null,
  };
  return { changes, loaded: { ...loaded, plan }, manifestPath, manifest, configRecord };
}

export function systemctlLine(loc: Locations, args: string): string {
  return ["systemctl", ...loc.systemctlScope, args].join(" ");
}
