/**
 * `lychd init` and `lychd render`: config -> plan -> diff -> (write, secret, daemon-reload).
 * `init --dry-run` stops after the diff; `render --out DIR` writes the same plan into DIR.
 */
import { applyChanges, type Change, conflictError } from "../apply.ts";
import { prepare, systemctlLine, withLock } from "../install.ts";
import type { ConfigOptions } from "../cli.ts";
import { unifiedDiff } from "../diff.ts";
import type { Host } from "../host.ts";
import { type Locations, locations } from "../paths.ts";
import { GRAFANA_ADMIN_SECRET, soulstoneService } from "../units/model.ts";

export interface InitOptions {
  config: ConfigOptions;
  dryRun: boolean;
  force: boolean;
  reload: boolean;
  /** `--pull`: fetch the images after writing the units (lychd pull). */
  pull?: boolean;
}

/** Exit code when the files were written but systemd could not be reloaded. */
export const EXIT_NOT_RELOADED = 3;

export async function init(host: Host, options: InitOptions): Promise<number> {
  const loc = locations(options.config.system ? "system" : "user", (n) => host.env(n));
  if (options.dryRun) return await dryRun(host, loc, options);
  // The whole read-compare-write under the lock: a concurrent init or swap never interleaves.
  const outcome = await withLock(host, loc, async () => {
    const { changes, loaded, manifestPath, manifest } = await prepare(host, loc, options.config, {
      quadlet: loc.quadletDir,
      data: loc.dataDir,
      config: null,
    }, options.force);
    const conflict = conflictError(changes);
    if (conflict) throw conflict;
    await applyChanges(changes, manifest, manifestPath, host);
    return { changes, loaded };
  });
  const { changes, loaded } = outcome;
  const changed = changes.some((c) => ["create", "update", "remove"].includes(c.action));
  await ensureDirectories(host, loaded.plan.directories);
  host.out(`lychd init (${loc.mode} mode), config ${loaded.configPath}\n`);
  host.out(describeChanges(changes, false));
  host.out(`${summary(changes, false)}\n`);

  await ensureGrafanaSecret(host, loc);
  const reloaded = await reload(host, loc, changed, options.reload, loaded.config.active);
  if (!options.pull) return reloaded;
  host.out("\nPulling the images (init --pull):\n");
  const { pullFor } = await import("../pull.ts");
  const pulled = await pullFor(host, loc, loaded.config, [], false);
  return reloaded || pulled;
}

async function reload(
  host: Host,
  loc: Locations,
  changed: boolean,
  wanted: boolean,
  active: string,
): Promise<number> {
  if (!changed) {
    host.out("Nothing changed, so systemd was not reloaded.\n");
    return 0;
  }
  if (!wanted) {
    host.out(
      `Skipped the reload (--no-reload). To apply: ${systemctlLine(loc, "daemon-reload")}\n`,
    );
    return 0;
  }
  const r = await host.run("systemctl", [...loc.systemctlScope, "daemon-reload"]);
  if (r.code !== 0) {
    host.err(
      `The files are written, but \`${systemctlLine(loc, "daemon-reload")}\` failed ` +
        `(${r.code === 127 ? "systemctl not found" : `exit ${r.code}: ${r.stderr.trim()}`}).\n` +
        `Run it by hand once systemd is available.\n`,
    );
    return EXIT_NOT_RELOADED;
  }
  host.out(`Reloaded systemd: ${systemctlLine(loc, "daemon-reload")}\n`);
  host.out(
    `Next: lychd pull, then lychd swap ${active}  (or ${
      systemctlLine(loc, `start ${soulstoneService(active)}`)
    })\n`,
  );
  return 0;
}

async function dryRun(host: Host, loc: Locations, options: InitOptions): Promise<number> {
  const { changes } = await prepare(host, loc, options.config, {
    quadlet: loc.quadletDir,
    data: loc.dataDir,
    config: null,
  }, options.force);
  host.out(
    `lychd init --dry-run (${loc.mode} mode): showing what would change; nothing is written.\n\n`,
  );
  host.out(describeChanges(changes, true));
  host.out(`\n${summary(changes, true)}\n`);
  host.out(
    `init would then create the Podman secret ${GRAFANA_ADMIN_SECRET} (Grafana's admin ` +
      `password) if it is missing, and run \`${systemctlLine(loc, "daemon-reload")}\` ` +
      "if any file changed.\n",
  );
  return conflictError(changes) ? 1 : 0;
}

export interface RenderOptions {
  config: ConfigOptions;
  out: string;
  force: boolean;
}

/** Write the complete set into one folder: quadlet/, data/, lychd.yaml. No systemd, no secrets. */
export async function render(host: Host, options: RenderOptions): Promise<number> {
  const loc = locations(options.config.system ? "system" : "user", (n) => host.env(n));
  const out = host.absolute(options.out).replace(/\/+$/, "") || "/";
  const { changes, manifestPath, manifest } = await prepare(
    host,
    loc,
    options.config,
    {
      quadlet: `${out}/quadlet`,
      data: `${out}/data`,
      config: out,
    },
    options.force,
    `${out}/.lychd-manifest.json`,
  );
  await applyChanges(changes, manifest, manifestPath, host);
  host.out(`lychd render (${loc.mode} mode) into ${out}\n`);
  host.out(describeChanges(changes, false));
  host.out(`${summary(changes, false)}\n`);
  host.out(
    `The units refer to the real locations (${loc.dataDir}, ${loc.quadletDir}); ` +
      "`lychd init` installs them there.\n",
  );
  return 0;
}

async function ensureDirectories(host: Host, dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    try {
      await host.mkdirp(dir, 0o755);
    } catch (e) {
      host.err(
        `Could not create ${dir} (${(e as Error).message}); create it before starting an engine: ` +
          `mkdir -p ${dir}\n`,
      );
    }
  }
}

/**
 * Grafana's admin password: generated once, kept in a 0600 file for the user, handed to the
 * container only as a Podman secret. Never printed, never in a unit.
 */
async function ensureGrafanaSecret(host: Host, loc: Locations): Promise<void> {
  const file = `${loc.dataDir}/grafana-admin-password`;
  if (await host.readFile(file) === null) {
    const password = btoa(String.fromCharCode(...host.randomBytes(18)))
      .replaceAll("+", "-").replaceAll("/", "_");
    await host.mkdirp(loc.dataDir, 0o755);
    await host.writeFileAtomic(file, new TextEncoder().encode(password), 0o600);
  }
  const exists = await host.run("podman", ["secret", "inspect", GRAFANA_ADMIN_SECRET]);
  if (exists.code === 0) return;
  const created = exists.code === 127
    ? exists
    : await host.run("podman", ["secret", "create", GRAFANA_ADMIN_SECRET, file]);
  if (created.code === 0) {
    host.out(
      `Created the Podman secret ${GRAFANA_ADMIN_SECRET}: Grafana's admin password, also in ${file} (mode 0600).\n`,
    );
  } else {
    host.err(
      `Could not create the Podman secret ${GRAFANA_ADMIN_SECRET} ` +
        `(${created.code === 127 ? "podman not found" : created.stderr.trim()}). ` +
        `The scribe will not start without it. Create it with:\n` +
        `  podman secret create ${GRAFANA_ADMIN_SECRET} ${file}\n`,
    );
  }
}

const LABELS: Record<string, [string, string]> = {
  create: ["create", "created"],
  update: ["update", "updated"],
  unchanged: ["unchanged", "unchanged"],
  remove: ["remove", "removed"],
  conflict: ["CONFLICT", "CONFLICT"],
  "keep-edited": ["keep", "kept"],
};

function describeChanges(changes: Change[], withDiffs: boolean): string {
  let text = "";
  for (const c of changes) {
    const label = LABELS[c.action][withDiffs ? 0 : 1].padEnd(9);
    const note = c.reason
      ? ` (${c.reason}${c.action === "conflict" ? "; --force replaces it" : ""})`
      : "";
    const after = c.file?.content ?? "";
    const isBigJson = c.path.endsWith(".json") && c.action === "create";
    const lines = isBigJson ? ` (${after.split("\n").length - 1} lines)` : "";
    text += `${label} ${c.path}${note}${lines}\n`;
    if (withDiffs && !isBigJson && ["create", "update", "remove", "conflict"].includes(c.action)) {
      text += indent(unifiedDiff(c.before ?? "", after, c.path)) + "\n";
    }
  }
  return text;
}

function indent(text: string): string {
  return text.trimEnd().split("\n").map((l) => `    ${l}`).join("\n") + "\n";
}

function summary(changes: Change[], future: boolean): string {
  const count = (a: string) => changes.filter((c) => c.action === a).length;
  const verbs = future
    ? ["to create", "to update", "unchanged", "to remove", "conflicts"]
    : ["created", "updated", "unchanged", "removed", "kept (edited)"];
  const parts = [
    `${count("create")} ${verbs[0]}`,
    `${count("update")} ${verbs[1]}`,
    `${count("unchanged")} ${verbs[2]}`,
    `${count("remove")} ${verbs[3]}`,
    future ? `${count("conflict")} ${verbs[4]}` : `${count("keep-edited")} ${verbs[4]}`,
  ];
  return parts.join(", ") + ".";
}
