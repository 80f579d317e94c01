/**
 * `lychd init` and `lychd render`: config -> plan -> diff -> (write, secret, daemon-reload).
 * `init --dry-run` stops after the diff; `render --out DIR` writes the same plan into DIR.
 */
import { applyChanges, type Change, conflictError } from "../apply.ts";
import { loadConfig } from "../config/load.ts";
import type { ConfigOptions } from "../config/types.ts";
import { unifiedDiff } from "../diff.ts";
import { EXIT } from "../exit.ts";
import { LychdError } from "../errors.ts";
import type { Host } from "../host.ts";
import { imageExists } from "../images.ts";
import { daemonReload, prepare, type Prepared, systemctlLine, withLock } from "../install.ts";
import { lychdLine, openSetup, type Setup } from "../setup.ts";
import { showUnits, systemctl, SystemctlError } from "../systemctl.ts";
import {
  GATE_SERVICE,
  GRAFANA_ADMIN_SECRET,
  resolveEngines,
  soulstoneService,
} from "../units/model.ts";
import { BASE_URL } from "../readiness.ts";
import { STANDARD_PORT } from "../engines.ts";
import type { LychdConfig } from "../config/types.ts";

export interface InitOptions {
  config: ConfigOptions;
  dryRun: boolean;
  force: boolean;
  reload: boolean;
  /** `--pull`: fetch the images after writing the units (lychd pull). */
  pull?: boolean;
}

export async function init(host: Host, options: InitOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "init", force: options.force });
  const prepareHere = async () => {
    const loaded = await loadConfig(
      host,
      setup.configPath,
      options.config.overrides,
      // Only a completed init records lychd.yaml; before that, the defaults are the start.
      setup.manifest.config === undefined || options.force,
    );
    return await prepare(host, setup, loaded, null, options.force);
  };
  if (options.dryRun) return dryRun(host, setup, await prepareHere());
  // The whole read-compare-write under the lock: a concurrent init or swap never interleaves.
  let moved: MovedPort[] = [];
  const prepared = await withLock(host, setup.loc, async () => {
    const p = await prepareHere();
    const conflict = conflictError(p.changes);
    if (conflict) throw conflict;
    moved = options.reload ? await movedPorts(host, setup, p.changes) : [];
    if (moved.length > 0 && !options.force) throw movedError(setup, moved);
    if (options.reload && p.changes.some((c) => c.action === "remove" && isGateUnit(c.path))) {
      // gate: false now. Its [Install] link goes while systemctl can still read the unit.
      await host.run("systemctl", [...setup.loc.systemctlScope, "disable", "--now", GATE_SERVICE]);
    }
    await applyChanges(p.changes, p.manifest, p.manifestPath, host, p.configRecord);
    return p;
  });
  const { changes, loaded } = prepared;
  const loc = setup.loc;
  const changed = changes.some((c) => ["create", "update", "remove"].includes(c.action));
  await ensureDirectories(host, loaded.plan.directories);
  host.out(`lychd init (${loc.mode} mode), config ${loaded.configPath}\n`);
  host.out(describeChanges(changes, false));
  host.out(`${summary(changes, false)}\n`);

  await ensureGrafanaSecret(host, setup);
  if (!options.reload) {
    if (changed) {
      host.out(
        `Skipped the reload (--no-reload). To apply: ${systemctlLine(loc, "daemon-reload")}\n`,
      );
    }
    return EXIT.OK;
  }
  if (!changed) host.out("Nothing changed, so systemd was not reloaded.\n");
  else {
    try {
      await daemonReload(host, loc);
    } catch (e) {
      if (!(e instanceof SystemctlError)) throw e;
      host.err(
        `The files are written, but \`${systemctlLine(loc, "daemon-reload")}\` failed ` +
          `(${e.code === 127 ? "systemctl not found" : e.message}).\n` +
          "Run it by hand once systemd is available.\n",
      );
      return EXIT.NOT_RELOADED;
    }
    host.out(`Reloaded systemd: ${systemctlLine(loc, "daemon-reload")}\n`);
  }
  let code: number = EXIT.OK;
  if (options.pull) {
    host.out("\nPulling the images (init --pull):\n");
    const { pullFor } = await import("../pull.ts");
    code = await pullFor(host, loc, loaded.config, [], false);
  }
  if (moved.length > 0) {
    // --force: what runs on a port its unit no longer says is stopped, not reached wrongly.
    const units = moved.map((m) => soulstoneService(m.engine));
    await systemctl(host, loc.systemctlScope, "stop", ...units).catch(() => {});
    host.out(
      `Stopped ${units.join(" ")}: ${describeMoves(moved)}. \`${
        lychdLine(setup, "swap ENGINE")
      }\` starts the one to serve.\n`,
    );
  }
  const running = await runningEngine(host, setup, loaded.config);
  await startWatchers(host, setup, prepared);
  if (loaded.config.gate.enabled) await startGate(host, setup, prepared);
  const active = loaded.config.active;
  if (running && changedUnit(prepared, running)) {
    host.out(
      `${soulstoneService(running)} still runs with its old unit: \`${
        lychdLine(setup, `swap ${running}`)
      }\` restarts it with the change.\n`,
    );
  } else if (!running) {
    host.out(
      `Next: ${options.pull ? "" : `${lychdLine(setup, "pull")}, then `}${
        lychdLine(setup, `swap ${active}`)
      }  (or ${systemctlLine(loc, `start ${soulstoneService(active)}`)})\n`,
    );
  }
  return code;
}

/** The soulstone that runs now, if any (null also when systemd cannot tell). */
async function runningEngine(
  host: Host,
  setup: Setup,
  config: LychdConfig,
): Promise<string | null> {
  const names = resolveEngines(config).map((e) => e.name);
  try {
    const states = await showUnits(
      host,
      setup.loc.systemctlScope,
      names.map(soulstoneService),
      ["ActiveState"],
    );
    return names.find((n) =>
      ["active", "activating", "reloading"].includes(states[soulstoneService(n)]?.ActiveState)
    ) ?? null;
  } catch (e) {
    if (e instanceof SystemctlError) return null;
    throw e;
  }
}

function changedUnit(prepared: Prepared, engine: string): boolean {
  return prepared.changes.some((c) =>
    c.path.endsWith(`/soulstone-${engine}.container`) && ["create", "update"].includes(c.action)
  );
}

/**
 * The harvester and scribe run whichever engine serves: init starts them (they would otherwise
 * wait for the next boot) and restarts one whose files changed. One that cannot start yet (its
 * image is not here) is reported with the fix; it does not fail init.
 */
async function startWatchers(host: Host, setup: Setup, prepared: Prepared): Promise<void> {
  const loc = setup.loc;
  const units = prepared.loaded.plan.files.filter((f) => f.root === "quadlet");
  const watchers = [
    { unit: "harvester.service", file: "harvester.container", data: "/prometheus/" },
    { unit: "scribe.service", file: "scribe.container", data: "/grafana/" },
  ];
  let states: Record<string, Record<string, string>>;
  try {
    states = await showUnits(host, loc.systemctlScope, watchers.map((w) => w.unit), [
      "ActiveState",
    ]);
  } catch (e) {
    if (!(e instanceof SystemctlError)) throw e;
    host.err(`Could not ask systemd about the harvester and scribe: ${e.message}\n`);
    return;
  }
  for (const w of watchers) {
    const text = units.find((f) => f.path === w.file)?.content ?? "";
    const image = text.match(/^Image=(.+)$/m)?.[1] ?? "";
    const changed = prepared.changes.some((c) =>
      ["create", "update"].includes(c.action) &&
      (c.path === `${loc.quadletDir}/${w.file}` || c.path.startsWith(`${loc.dataDir}${w.data}`))
    );
    const state = states[w.unit]?.ActiveState ?? "unknown";
    const running = ["active", "activating", "reloading"].includes(state);
    if (running && !changed) continue;
    if (!running && (await imageExists(host, image)) === false) {
      host.out(
        `${w.unit} is not started: its image ${image} is not on this host yet. ` +
          `Fetch it with \`${lychdLine(setup, "pull")}\`, then \`${
            systemctlLine(loc, `start ${w.unit}`)
          }\`.\n`,
      );
      continue;
    }
    try {
      await systemctl(host, loc.systemctlScope, running ? "restart" : "start", w.unit);
      host.out(
        `${running ? "Restarted" : "Started"} ${w.unit} (${
          running ? "its files changed" : "was not running"
        }).\n`,
      );
    } catch (e) {
      if (!(e instanceof SystemctlError)) throw e;
      host.err(
        `Could not ${running ? "restart" : "start"} ${w.unit}: ${e.message}. ` +
          `See \`${lychdLine(setup, `logs ${w.unit.replace(".service", "")}`)}\`.\n`,
      );
    }
  }
}

function isGateUnit(path: string): boolean {
  return path.endsWith(`/${GATE_SERVICE}`);
}

/**
 * The gate is a plain unit: enabled (its [Install] link) and started here, and restarted when
 * its unit changed. The unit carries a fingerprint of what the gate takes from lychd.yaml and
 * keeps (lib/units/model.ts), so another change to lychd.yaml leaves it running: a restart cuts
 * the requests in flight through it; init says so when it does.
 */
async function startGate(host: Host, setup: Setup, prepared: Prepared): Promise<void> {
  const loc = setup.loc;
  const changed = prepared.changes.some((c) =>
    ["create", "update"].includes(c.action) && isGateUnit(c.path)
  );
  try {
    const state = (await showUnits(host, loc.systemctlScope, [GATE_SERVICE], [
      "ActiveState",
      "UnitFileState",
    ]))[GATE_SERVICE];
    if (state?.UnitFileState !== "enabled") {
      await systemctl(host, loc.systemctlScope, "enable", GATE_SERVICE);
    }
    const running = ["active", "activating", "reloading"].includes(state?.ActiveState ?? "");
    if (running && !changed) return;
    await systemctl(host, loc.systemctlScope, running ? "restart" : "start", GATE_SERVICE);
    // systemd has started the program; clients may come as soon as init returns, so wait until
    // it listens, for as long as systemd says it runs (a gate that dies is not waited for).
    const listening = await gateListens(host, loc.systemctlScope);
    if (listening !== true) {
      host.err(
        `${GATE_SERVICE} was started, but nothing answers on ${BASE_URL} (${listening}). ` +
          `See \`${lychdLine(setup, "logs gate")}\`.\n`,
      );
      return;
    }
    host.out(
      running
        ? `Restarted ${GATE_SERVICE} (its settings changed; requests in flight through it were cut off).\n`
        : `Started ${GATE_SERVICE}: lychd holds ${BASE_URL}, the engines answer on 127.0.0.1:${prepared.loaded.config.gate.enginePort}.\n`,
    );
  } catch (e) {
    if (!(e instanceof SystemctlError)) throw e;
    host.err(
      `Could not start ${GATE_SERVICE}: ${e.message}. See \`${lychdLine(setup, "logs gate")}\`.\n`,
    );
  }
}

const GATE_LISTEN_TIMEOUT_MS = 10_000;

/** true once the gate listens; else what systemd says of it (it stopped running, or timed out). */
async function gateListens(host: Host, scope: string[]): Promise<true | string> {
  const t0 = host.now();
  for (;;) {
    if (await host.portOpen(STANDARD_PORT)) return true;
    const state = (await showUnits(host, scope, [GATE_SERVICE], ["ActiveState", "SubState"]))[
      GATE_SERVICE
    ];
    if (state?.ActiveState !== "active") {
      return `it is ${state?.ActiveState ?? "unknown"}${
        state?.SubState ? `/${state.SubState}` : ""
      }`;
    }
    if (host.now() - t0 >= GATE_LISTEN_TIMEOUT_MS) {
      return `not after ${GATE_LISTEN_TIMEOUT_MS / 1000} s`;
    }
    await host.sleep(50);
  }
}

function dryRun(host: Host, setup: Setup, prepared: Prepared): number {
  const loc = setup.loc;
  host.out(
    `lychd init --dry-run (${loc.mode} mode): showing what would change; nothing is written.\n\n`,
  );
  host.out(describeChanges(prepared.changes, true));
  host.out(`\n${summary(prepared.changes, true)}\n`);
  const start = prepared.loaded.config.gate.enabled
    ? `, start the harvester and scribe, and enable and start ${GATE_SERVICE} (lychd on ${BASE_URL})`
    : ", and start the harvester and scribe";
  host.out(
    `init would then create the Podman secret ${GRAFANA_ADMIN_SECRET} (Grafana's admin ` +
      `password) if it is missing, run \`${systemctlLine(loc, "daemon-reload")}\` ` +
      `if any file changed${start}.\n`,
  );
  return conflictError(prepared.changes) ? EXIT.FAILED : EXIT.OK;
}

export interface RenderOptions {
  config: ConfigOptions;
  out: string;
  force: boolean;
}

/** Write the complete set into one folder: quadlet/, data/, lychd.yaml. No systemd, no secrets. */
export async function render(host: Host, options: RenderOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "render" });
  const loc = setup.loc;
  const out = host.absolute(options.out).replace(/\/+$/, "") || "/";
  const loaded = await loadConfig(host, setup.configPath, options.config.overrides, true);
  const p = await prepare(host, setup, loaded, out, options.force);
  await applyChanges(p.changes, p.manifest, p.manifestPath, host);
  host.out(`lychd render (${loc.mode} mode) into ${out}\n`);
  host.out(describeChanges(p.changes, false));
  host.out(`${summary(p.changes, false)}\n`);
  host.out(
    `The units refer to the real locations (${loc.dataDir}, ${loc.quadletDir}); ` +
      "`lychd init` installs them there.\n",
  );
  return EXIT.OK;
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
async function ensureGrafanaSecret(host: Host, setup: Setup): Promise<void> {
  const loc = setup.loc;
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

interface MovedPort {
  engine: string;
  from: number;
  to: number;
}

/**
 * Engines that run and whose published port the changes move: `gate:` on or off, another
 * `gate.engine_port`, or engines that sleep reordered (each takes a port after the engine port,
 * in the order of `engines:`: docs/warm-swaps.md). The gate reads the new ports when it
 * (re)starts; the engines would go on listening on the old ones.
 */
async function movedPorts(host: Host, setup: Setup, changes: Change[]): Promise<MovedPort[]> {
  // Published from a network of its own, or listening on the host's (templates/soulstone.j2).
  const port = (text: string | null | undefined) =>
    Number(
      text?.match(/^PublishPort=127\.0\.0\.1:(\d+):/m)?.[1] ??
        text?.match(/^ExposeHostPort=(\d+)$/m)?.[1] ?? NaN,
    );
  const candidates = changes.flatMap((c) => {
    const engine = c.action === "update" ? c.path.match(/\/soulstone-(.+)\.container$/)?.[1] : null;
    if (!engine) return [];
    const [from, to] = [port(c.before), port(c.file?.content)];
    return Number.isFinite(from) && Number.isFinite(to) && from !== to
      ? [{ engine, from, to }]
      : [];
  });
  if (candidates.length === 0) return [];
  try {
    const states = await showUnits(
      host,
      setup.loc.systemctlScope,
      candidates.map((m) => soulstoneService(m.engine)),
      ["ActiveState"],
    );
    return candidates.filter((m) =>
      ["active", "activating", "reloading"].includes(
        states[soulstoneService(m.engine)]?.ActiveState,
      )
    );
  } catch (e) {
    if (e instanceof SystemctlError) return [];
    throw e;
  }
}

function describeMoves(moved: MovedPort[]): string {
  return moved.map((m) => `${m.engine}'s port moved from ${m.from} to ${m.to}`).join(", ");
}

function movedError(setup: Setup, moved: MovedPort[]): LychdError {
  return new LychdError(
    `lychd init would move engines that run to other ports: ${
      moved.map((m) => `${m.engine} ${m.from} -> ${m.to}`).join(", ")
    } (gate, gate.engine_port, and for engines that sleep the order of engines:, decide the ` +
      "ports). The gate would send their requests to ports where they do not listen. Nothing " +
      "was written. " +
      `Stop them first (\`${lychdLine(setup, "stop")}\`), or run again with --force: lychd then ` +
      `stops them, and \`${lychdLine(setup, "swap ENGINE")}\` starts the one to serve.`,
  );
}
