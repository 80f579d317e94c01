/**
 * `lychd swap ENGINE`: make ENGINE the engine on port 8081 and return only when it really
 * serves; if it cannot, put back the engine that served before.
 *
 *   lock -> ENGINE becomes the boot engine (units re-rendered, daemon-reload) ->
 *   systemctl start soulstone-ENGINE (Conflicts= stops the old one first, After= orders it) ->
 *   wait: health path 200, then /v1/models lists the model -> report the phases.
 *   On a failed unit or a timeout: journal tail, then roll back the same way.
 */
import type { ConfigOptions } from "../cli.ts";
import { loadConfig } from "../config/load.ts";
import { LychdError } from "../errors.ts";
import type { Host } from "../host.ts";
import { type Locations, locations } from "../paths.ts";
import { BASE_URL, type Probe, probe } from "../readiness.ts";
import { journalTail, parseTimestamp, showUnits, systemctl, SystemctlError } from "../systemctl.ts";
import { imageExists } from "../images.ts";
import { type Engine, resolveEngines, soulstoneService } from "../units/model.ts";
import { installUnits, withLock } from "../install.ts";

export interface SwapOptions {
  config: ConfigOptions;
  engine: string;
  /** Readiness timeout in seconds; null = the engine's start_timeout. */
  timeoutSec: number | null;
  wait: boolean;
  rollback: boolean;
}

/** Exit codes: the swap failed but the previous engine serves again / nothing serves now. */
export const EXIT_ROLLED_BACK = 1;
export const EXIT_NOT_SERVING = 4;

const POLL_MS = 25;
const UNIT_CHECK_MS = 1000;

export async function swap(host: Host, options: SwapOptions): Promise<number> {
  const loc = locations(options.config.system ? "system" : "user", (n) => host.env(n));
  const { config } = await loadConfig(host, loc, options.config);
  const engines = resolveEngines(config);
  const target = engines.find((e) => e.name === options.engine);
  if (!target) {
    throw new LychdError(
      `unknown engine "${options.engine}"; configured: ${engines.map((e) => e.name).join(", ")}. ` +
        "Add it with `lychd init --engines ...`.",
      2,
    );
  }
  const unitFile = `${loc.quadletDir}/soulstone-${target.name}.container`;
  if (!(await host.exists(unitFile))) {
    throw new LychdError(`${unitFile} is not there: run \`lychd init\` first.`);
  }
  if ((await imageExists(host, target.image)) === false) {
    throw new LychdError(
      `the image of ${target.name}, ${target.image}, is not on this host, and lychd's units never ` +
        `download during a swap. Fetch it first: lychd pull ${target.name}`,
    );
  }
  return await withLock(
    host,
    loc,
    () => swapLocked(host, loc, options, engines, target, config.active),
  );
}

async function swapLocked(
  host: Host,
  loc: Locations,
  options: SwapOptions,
  engines: Engine[],
  target: Engine,
  bootBefore: string,
): Promise<number> {
  const scope = loc.systemctlScope;
  const units = engines.map((e) => soulstoneService(e.name));
  const states = await showUnits(host, scope, units, ["ActiveState"]);
  const running = engines.filter((e) =>
    ["active", "activating", "reloading"].includes(states[soulstoneService(e.name)]?.ActiveState)
  );
  const previous = running.find((e) => e.name !== target.name) ?? null;

  if (running.some((e) => e.name === target.name) && !previous) {
    const p = await probe(host, target);
    if (p.state === "ready") {
      host.out(`${target.name} is already active and healthy (${p.detail}); nothing to do.\n`);
      return 0;
    }
  }

  const progress = new Progress(host, target.name);
  // Interrupted (Ctrl-C, SIGTERM): say what state the host is in; exiting drops the lock.
  const stopListening = host.onInterrupt((signal) => {
    progress.done();
    host.err(
      `\nlychd swap interrupted (${signal}) while: ${progress.current() || "preparing"}.\n` +
        `${target.name} is the boot engine now; systemd keeps starting soulstone-${target.name}.service ` +
        `in the background${previous ? ` (${previous.name} was stopped)` : ""}. ` +
        `See \`lychd status\`${
          previous ? `; go back with \`lychd swap ${previous.name}\`` : ""
        }.\n`,
    );
    return signal === "SIGINT" ? 130 : 143;
  });
  let result: Outcome;
  try {
    result = await switchTo(host, loc, options, target, previous, progress);
  } finally {
    stopListening();
  }
  if (result.ok) {
    host.out(`${result.report}\n`);
    return 0;
  }
  host.err(`\n${target.name} failed: ${result.reason}\n`);
  host.err(`Last lines of ${soulstoneService(target.name)}'s journal:\n`);
  host.err(indent(await journalTail(host, scope, soulstoneService(target.name), 20)));

  if (!options.rollback) {
    host.err(`Not rolling back (--no-rollback): ${target.name} is left as it is.\n`);
    return EXIT_NOT_SERVING;
  }
  if (!previous) {
    await systemctl(host, scope, "stop", soulstoneService(target.name)).catch(() => {});
    // Nothing to roll back to, but the boot engine goes back to what it was.
    await installUnits(host, loc, {
      ...options.config,
      overrides: [{ path: ["active"], value: bootBefore, flag: "swap" }],
    });
    host.err(
      `No engine served before the swap; ${target.name} is stopped again and ${bootBefore} is the ` +
        "boot engine again. Nothing serves now.\n",
    );
    return EXIT_NOT_SERVING;
  }
  host.err(`Rolling back to ${previous.name}...\n`);
  const back = await switchTo(
    host,
    loc,
    { ...options, timeoutSec: null },
    previous,
    target,
    new Progress(host, previous.name),
  );
  if (back.ok) {
    host.err(
      `${back.report}\nThe swap to ${target.name} failed; ${previous.name} serves again, as before.\n`,
    );
    return EXIT_ROLLED_BACK;
  }
  host.err(
    `The rollback failed too: ${previous.name}: ${back.reason}. Nothing serves on 127.0.0.1:8081 now; ` +
      "see `lychd status` and `lychd logs`.\n",
  );
  return EXIT_NOT_SERVING;
}

type Outcome = { ok: true; report: string } | { ok: false; reason: string };

/** Make `engine` the boot engine, start it, wait until it serves. */
async function switchTo(
  host: Host,
  loc: Locations,
  options: SwapOptions,
  engine: Engine,
  previous: Engine | null,
  progress: Progress,
): Promise<Outcome> {
  const scope = loc.systemctlScope;
  const service = soulstoneService(engine.name);
  const t0 = host.now();
  await installUnits(host, loc, {
    ...options.config,
    overrides: [{ path: ["active"], value: engine.name, flag: "swap" }],
  });
  progress.phase(
    previous
      ? `stopping ${previous.name}, then starting ${engine.name}`
      : `starting ${engine.name}`,
  );
  try {
    // Returns once the container runs; Conflicts= has stopped the previous engine before that.
    await systemctl(host, scope, "start", service);
  } catch (e) {
    progress.done();
    if (e instanceof SystemctlError) return { ok: false, reason: e.message };
    throw e;
  }
  const props = [
    "ActiveState",
    "InactiveEnterTimestamp",
    "ActiveEnterTimestamp",
    "Result",
    "ExecMainStatus",
  ];
  const after = await showUnits(
    host,
    scope,
    previous ? [soulstoneService(previous.name), service] : [service],
    props,
  );
  const stoppedAt = previous
    ? parseTimestamp(after[soulstoneService(previous.name)]?.InactiveEnterTimestamp)
    : null;
  const upAt = parseTimestamp(after[service]?.ActiveEnterTimestamp) ?? host.now();
  const killed = previous ? wasKilled(after[soulstoneService(previous.name)]) : false;
  if (previous) {
    progress.note(`${previous.name} stopped${killed ? " (it did not exit in time: killed)" : ""}`);
  }
  if (previous && killed) {
    // Killed on purpose by the stop timeout: not a failure worth keeping on the unit.
    await systemctl(host, scope, "reset-failed", soulstoneService(previous.name)).catch(() => {});
  }
  progress.note("container up");

  if (!options.wait) {
    progress.done();
    return { ok: true, report: `${engine.name} started (--no-wait: not waiting until it serves).` };
  }

  const timeoutMs = (options.timeoutSec ?? engine.settings.startTimeoutSec) * 1000;
  const deadline = t0 + timeoutMs;
  let last: Probe | null = null;
  let lastUnitCheck = host.now();
  for (;;) {
    const p = await probe(host, engine, 2000);
    if (p.state === "ready") break;
    if (p.detail !== last?.detail) progress.phase(phaseText(p));
    last = p;
    progress.tick();
    if (host.now() - lastUnitCheck >= UNIT_CHECK_MS) {
      lastUnitCheck = host.now();
      const state = (await showUnits(host, scope, [service], ["ActiveState"]))[service]
        ?.ActiveState;
      // The engine's own latest word (download or load progress) next to the elapsed time.
      const line = (await journalTail(host, scope, service, 1)).trim();
      if (line && !line.startsWith("(journalctl failed")) progress.log(line);
      if (state === "failed" || state === "inactive") {
        progress.done();
        return {
          ok: false,
          reason: `the unit is ${state} (last answer on port 8081: ${p.detail})`,
        };
      }
    }
    if (host.now() >= deadline) {
      progress.done();
      return {
        ok: false,
        reason: `not ready after ${
          fmt(timeoutMs)
        } (last answer on ${BASE_URL}${engine.healthPath}: ${p.detail})`,
      };
    }
    await host.sleep(POLL_MS);
  }
  const readyAt = host.now();
  progress.done();
  const phases = [
    ...(previous
      ? [`old engine stopped ${fmt((stoppedAt ?? upAt) - t0)}${killed ? " (killed)" : ""}`]
      : []),
    `container up ${fmt(upAt - (stoppedAt ?? t0))}`,
    `model loaded ${fmt(Math.max(0, readyAt - upAt))}`,
  ];
  return {
    ok: true,
    report: `${engine.name} ready in ${fmt(readyAt - t0)} (${phases.join(", ")})`,
  };
}

/** systemd had to kill the old engine (its stop timed out), or the container died of SIGKILL. */
function wasKilled(props: Record<string, string> | undefined): boolean {
  return props?.Result === "timeout" || props?.ExecMainStatus === "137";
}

function phaseText(p: Probe): string {
  switch (p.state) {
    case "down":
      return "waiting for the server to open its port";
    case "loading":
      return `loading (${p.detail})`;
    case "wrong-model":
      return `up, but ${p.detail}`;
    default:
      return p.detail;
  }
}

function fmt(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function indent(text: string): string {
  return text.trimEnd().split("\n").map((l) => `  | ${l}`).join("\n") + "\n";
}

/**
 * Progress on stderr: one line rewritten in place on a terminal, plain lines (one per phase)
 * otherwise. Always shows the elapsed time.
 */
class Progress {
  private start: number;
  private text = "";
  private lastDraw = 0;
  private tty: boolean;

  constructor(private host: Host, private engine: string) {
    this.start = host.now();
    this.tty = host.isTerminal();
  }

  phase(text: string) {
    this.text = text;
    if (this.tty) this.draw();
    else this.host.err(`[${this.elapsed()}] ${this.engine}: ${text}\n`);
  }

  note(text: string) {
    if (this.tty) this.host.err(`\r\x1b[2K[${this.elapsed()}] ${this.engine}: ${text}\n`);
    else this.host.err(`[${this.elapsed()}] ${this.engine}: ${text}\n`);
  }

  tick() {
    if (this.tty && this.host.now() - this.lastDraw >= 200) this.draw();
  }

  done() {
    if (this.tty) this.host.err("\r\x1b[2K");
  }

  current(): string {
    return this.text;
  }

  private lastLog = "";

  log(line: string) {
    if (line === this.lastLog) return;
    this.lastLog = line;
    if (this.tty) this.draw();
    else this.host.err(`[${this.elapsed()}] ${this.engine} says: ${line.slice(0, 200)}\n`);
  }

  private draw() {
    this.lastDraw = this.host.now();
    const log = this.lastLog ? ` | ${this.lastLog}` : "";
    // One terminal line: cut to the usual width rather than wrap.
    this.host.err(
      `\r\x1b[2K${`[${this.elapsed()}] ${this.engine}: ${this.text}${log}`.slice(0, 100)}`,
    );
  }

  private elapsed() {
    return fmt(this.host.now() - this.start).padStart(7);
  }
}
