/**
 * `lychd uninstall [--purge] [--dry-run] [--force]`: stop what lychd runs, remove exactly the
 * files its manifest says it wrote and nobody edited since (edited ones are listed and kept
 * unless --force), reload systemd. Prometheus' and Grafana's data (volumes), the Grafana
 * password and lychd.yaml stay unless --purge; even then lychd.yaml goes only if lychd wrote it
 * (the user's own file needs --force), and --purge also removes the engines' compile caches
 * (lychd's own folder). The model cache is never touched.
 */
import { ownership, readManifest, writeManifest } from "../apply.ts";
import type { ConfigOptions } from "../config/types.ts";
import { EXIT } from "../exit.ts";
import type { Host } from "../host.ts";
import type { Locations } from "../paths.ts";
import { GATE_SERVICE, GRAFANA_ADMIN_SECRET } from "../units/model.ts";
import { clearAsleepMarks } from "../sleep.ts";
import { daemonReload, systemctlLine, withLock } from "../install.ts";
import { openSetup } from "../setup.ts";
import { SystemctlError } from "../systemctl.ts";

export interface UninstallOptions {
  config: ConfigOptions;
  purge: boolean;
  dryRun: boolean;
  force: boolean;
}

const VOLUMES = ["lychd-harvester-data", "lychd-scribe-data"];

export async function uninstall(host: Host, options: UninstallOptions): Promise<number> {
  // "inspect": an uninstall with nothing installed is a no-op, not an error; a --config that is
  // not the recorded one is refused like everywhere else.
  const setup = await openSetup(host, options.config, { kind: "inspect" });
  const { loc, manifestPath } = setup;
  const manifest = await readManifest(host, manifestPath);
  const paths = Object.keys(manifest.files).sort();
  const configFile = setup.configPath;
  const password = `${loc.dataDir}/grafana-admin-password`;
  // lychd.yaml is deleted only if lychd wrote it (recorded at init); the user's own needs --force.
  const configIsOurs = manifest.config?.path === configFile && manifest.config.writtenByLychd;
  const purgeConfig = options.purge && (configIsOurs || options.force);
  if (
    paths.length === 0 &&
    !(options.purge && (await host.exists(configFile) || await host.exists(password)))
  ) {
    host.out(`Nothing to uninstall: lychd has no files recorded in ${manifestPath}.\n`);
    return 0;
  }

  const remove: string[] = [];
  const keep: string[] = [];
  for (const p of paths) {
    const bytes = await host.readFile(p);
    if (bytes === null) continue;
    if (await ownership(manifest, p, bytes) === "lychd" || options.force) remove.push(p);
    else keep.push(p);
  }
  const units = paths.filter((p) => p.endsWith(".container") || p.endsWith(".service")).map((p) =>
    p.slice(p.lastIndexOf("/") + 1).replace(/\.container$/, ".service")
  );
  const purged = options.purge ? [...(purgeConfig ? [configFile] : []), password] : [];
  const configKept = options.purge && !purgeConfig && await host.exists(configFile)
    ? `${configFile} (you wrote it, not lychd; --purge --force removes it too)`
    : null;

  if (options.dryRun) {
    host.out(`lychd uninstall --dry-run (${loc.mode} mode): nothing is changed.\n`);
    if (units.length) host.out(`would stop: ${units.join(" ")}\n`);
    for (const p of remove) host.out(`would remove  ${p}\n`);
    for (const p of keep) {
      host.out(`would keep    ${p} (edited since lychd wrote it; --force removes it)\n`);
    }
    if (options.purge) {
      for (const p of purged) host.out(`would remove  ${p}\n`);
      if (configKept) host.out(`would keep    ${configKept}\n`);
      host.out(
        `would remove the Podman volumes ${
          VOLUMES.join(", ")
        } and the secret ${GRAFANA_ADMIN_SECRET}\n`,
      );
      if (await host.exists(loc.compileCacheDir)) {
        host.out(`would remove  ${loc.compileCacheDir} (the engines' compile caches)\n`);
      }
    } else {host.out(
        "would keep Prometheus' and Grafana's data and lychd.yaml (--purge removes them)\n",
      );}
    return 0;
  }

  return await withLock(host, loc, async () => {
    if (units.includes(GATE_SERVICE)) {
      // A plain unit's [Install] is a link systemctl made: it goes with the unit.
      await host.run("systemctl", [...loc.systemctlScope, "disable", GATE_SERVICE]);
    }
    if (units.length) {
      const stopped = await host.run("systemctl", [...loc.systemctlScope, "stop", ...units]);
      if (stopped.code !== 0) {
        host.err(
          `Could not stop ${units.join(" ")}: ${stopped.stderr.trim() || `exit ${stopped.code}`}\n`,
        );
      }
      // The marks of engines that slept (docs/warm-swaps.md) go too; unsetting one never set is
      // no error, and one that fails is not worth stopping the uninstall for.
      const engines = units.flatMap((u) => u.match(/^soulstone-(.+)\.service$/)?.slice(1) ?? []);
      await clearAsleepMarks(host, loc.systemctlScope, engines).catch(() => {});
    }
    for (const p of remove) {
      await host.remove(p);
      host.out(`removed  ${p}\n`);
    }
    for (const p of keep) {
      host.out(`kept     ${p} (edited since lychd wrote it; --force removes it)\n`);
    }
    // Keep the kept files recorded, so a later `uninstall --force` still knows them.
    const rest = Object.fromEntries(keep.map((p) => [p, manifest.files[p]]));
    if (keep.length) {
      await writeManifest(host, manifestPath, { ...manifest, files: rest });
    } else await host.remove(manifestPath);

    let failed = false;
    if (options.purge) {
      for (const v of VOLUMES) {
        const r = await host.run("podman", ["volume", "rm", "--force", v]);
        if (r.code === 0) host.out(`removed  Podman volume ${v}\n`);
        else {
          failed = true;
          host.err(
            `could not remove the Podman volume ${v}: ${r.stderr.trim() || `exit ${r.code}`}\n`,
          );
        }
      }
      const inspect = await host.run("podman", ["secret", "inspect", GRAFANA_ADMIN_SECRET]);
      if (inspect.code === 0) {
        const r = await host.run("podman", ["secret", "rm", GRAFANA_ADMIN_SECRET]);
        if (r.code === 0) host.out(`removed  Podman secret ${GRAFANA_ADMIN_SECRET}\n`);
        else {
          failed = true;
          host.err(
            `could not remove the Podman secret ${GRAFANA_ADMIN_SECRET}: ${
              r.stderr.trim() || `exit ${r.code}`
            }\n`,
          );
        }
      }
      for (const p of purged) {
        if (await host.exists(p)) {
          await host.remove(p);
          host.out(`removed  ${p}\n`);
        }
      }
      if (configKept) host.out(`kept     ${configKept}\n`);
      if (!(await removeCompileCaches(host, loc))) failed = true;
    } else {
      host.out(
        `kept Prometheus' and Grafana's data (volumes ${
          VOLUMES.join(", ")
        }), the Grafana password and ` +
          `${configFile}: \`lychd uninstall --purge\` removes them.\n`,
      );
    }
    await removeEmptyFolders(host, loc.dataDir, remove);
    try {
      await daemonReload(host, loc);
    } catch (e) {
      if (!(e instanceof SystemctlError)) throw e;
      host.err(`${e.message}\nRun \`${systemctlLine(loc, "daemon-reload")}\` by hand.\n`);
      return EXIT.NOT_RELOADED;
    }
    return failed ? EXIT.FAILED : EXIT.OK;
  });
}

/** The folders lychd created under its data folder, deepest first, if they are now empty. */
async function removeEmptyFolders(host: Host, dataDir: string, removed: string[]) {
  const dirs = new Set<string>();
  for (const p of removed) {
    for (
      let d = p.slice(0, p.lastIndexOf("/"));
      d.startsWith(dataDir) && d.length > dataDir.length;
      d = d.slice(0, d.lastIndexOf("/"))
    ) {
      dirs.add(d);
    }
  }
  for (const d of [...dirs].sort((a, b) => b.length - a.length)) {
    await host.removeEmptyDir(d);
  }
}

/**
 * The engines' compile caches: lychd's own folder, so --purge removes all of it. In user mode
 * an engine that ran as a non-root user in its container left files owned by the user's
 * subordinate IDs, which only `podman unshare` may delete.
 */
async function removeCompileCaches(host: Host, loc: Locations): Promise<boolean> {
  const dir = loc.compileCacheDir;
  if (!(await host.exists(dir))) return true;
  try {
    await host.removeTree(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.PermissionDenied) || loc.mode !== "user") {
      host.err(`could not remove ${dir}: ${(e as Error).message}\n`);
      return false;
    }
    const r = await host.run("podman", ["unshare", "rm", "-rf", dir]);
    if (r.code !== 0) {
      host.err(`could not remove ${dir}: ${r.stderr.trim() || `exit ${r.code}`}\n`);
      return false;
    }
  }
  host.out(`removed  ${dir} (the engines' compile caches)\n`);
  return true;
}
