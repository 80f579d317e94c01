/**
 * `lychd swap ENGINE`: make ENGINE the engine on port 8081 and return only when it really
 * serves; if it cannot, put back the engine that served before.
 *
 *   lock -> ENGINE becomes the boot engine (units re-rendered, daemon-reload) ->
 *   systemctl start soulstone-ENGINE (Conflicts= stops the old one first, After= orders it) ->
 *   wait: health path 200, then /v1/models lists the model -> report the phases.
 *   On a failed unit or a timeout: journal tail, then roll back the same way.
 */
import { loadConfig, resolveConfig } from "../config/load.ts";
import type { ConfigOptions } from "../config/types.ts";
import { LychdError } from "../errors.ts";
import { EXIT } from "../exit.ts";
import type { Host } from "../host.ts";
import { imageExists, modelLocation } from "../images.ts";
import { installUnits, withLock } from "../install.ts";
import { withoutInstall } from "../apply.ts";
import { BASE_URL, engineUrl, isAsleep, type Probe, probe, warmUp } from "../readiness.ts";
import {
  clearAsleepMarks,
  markAsleep,
  putToSleep,
  reconcileMarks,
  wake,
  whyNotSleep,
} from "../sleep.ts";
import { lychdLine, openSetup, type Setup } from "../setup.ts";
import {
  journalTail,
  parseTimestamp,
  showUnits,
  systemctl,
  SystemctlError,
  type UnitProps,
} from "../systemctl.ts";
import { printable } from "../text.ts";
import { describeHolders, unitGpuMemory, waitForGpuMemory, waitForRelease } from "../gpu.ts";
import { controlFolder, GateClient, type GateControl } from "../gate/control.ts";
import type { SwapRecord } from "../gate/proxy.ts";
import type { LychdConfig } from "../config/types.ts";
import { type Engine, GATE_SERVICE, resolveEngines, soulstoneService } from "../units/model.ts";

export interface SwapOptions {
  config: ConfigOptions;
  engine: string;
  /** Readiness timeout in seconds; null = the engine's start_timeout. */
  timeoutSec: number | null;
  wait: boolean;
  rollback: boolean;
  /** Behind the gate: wait for the old engine's requests in flight before stopping it. */
  drain: boolean;
  /** How long to wait for them; null = gate.drain_timeout. */
  drainTimeoutSec: number | null;
  /**
   * Whether Ctrl-C and SIGTERM end the swap (and the process), saying what state the host is
   * in; false inside the gate (on demand), whose own shutdown handles them.
   */
  ownSignals?: boolean;
  /**
   * On demand: the gate the swap runs in (no round trips through its control folder), and the
   * boot engine stays as it is (`active:` in lychd.yaml): a swap for one request does not
   * rewrite lychd.yaml and the units and reload systemd, and a reboot starts the engine the
   * operator chose. Nor does it run Podman: the gate's sandbox keeps it out (docs/gate.md, "The
   * gate's sandbox"), so the image is not looked for first (a missing one fails the start, and
   * the journal says why) and a changed stop_timeout is left to systemd.
   */
  inGate?: GateControl;
}

/** `lychd swap ENGINE` without flags (on demand runs exactly this). */
export function swapDefaults(config: ConfigOptions, engine: string): SwapOptions {
  return {
    config,
    engine,
    timeoutSec: null,
    wait: true,
    rollback: true,
    drain: true,
    drainTimeoutSec: null,
  };
}

const POLL_MS = 25;
const UNIT_CHECK_MS = 1000;
const RUNNING = ["active", "activating", "reloading"];

export async function swap(host: Host, options: SwapOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  // Everything from reading lychd.yaml on happens under the lock: a concurrent init or swap
  // never sees (or writes) a half-done state.
  return await withLock(host, setup.loc, () => swapLocked(host, setup, options));
}

async function swapLocked(host: Host, setup: Setup, options: SwapOptions): Promise<number> {
  const loc = setup.loc;
  const loaded = await loadConfig(host, setup.configPath, [], false);
  const text = loaded.originalText!;
  const bootBefore = loaded.config.active;
  const engines = resolveEngines(loaded.config);
  const target = engines.find((e) => e.name === options.engine);
  if (!target) {
    throw new LychdError(
      `unknown engine "${options.engine}"; configured: ${engines.map((e) => e.name).join(", ")}. ` +
        `Add it with \`${lychdLine(setup, "init")} --engines ...\`.`,
      EXIT.USAGE,
    );
  }
  const unitFile = `${loc.quadletDir}/soulstone-${target.name}.container`;
  if (!(await host.exists(unitFile))) {
    throw new LychdError(`${unitFile} is not there: run \`${lychdLine(setup, "init")}\` first.`);
  }
  if (!options.inGate && (await imageExists(host, target.image)) === false) {
    throw new LychdError(
      `the image of ${target.name}, ${target.image}, is not on this host, and lychd's units never ` +
        `download during a swap. Fetch it first: ${lychdLine(setup, `pull ${target.name}`)}`,
    );
  }
  const scope = loc.systemctlScope;
  const states = await showUnits(host, scope, engines.map((e) => soulstoneService(e.name)), [
    "ActiveState",
    "ActiveEnterTimestamp",
  ]);
  const running = engines.filter((e) =>
    RUNNING.includes(states[soulstoneService(e.name)]?.ActiveState)
  );
  // Engines asleep run too (docs/warm-swaps.md): the one swapped away from is the one awake.
  const sleepers = engines.filter((e) => e.sleep !== null);
  const asleep = new Set<string>();
  for (const e of running) {
    if (e.sleep && (await isAsleep(host, e, scope)) === true) asleep.add(e.name);
  }
  const previous = running.find((e) => e.name !== target.name && !asleep.has(e.name)) ?? null;
  const targetRuns = running.some((e) => e.name === target.name);

  // Re-render with the target as the boot engine first: if its unit changes now (lychd.yaml was
  // edited) or changed after it started (through init), a running target must be restarted, or
  // it keeps serving with its old settings. Moving [Install] (the boot engine) needs no restart.
  const writtenBefore = await startedBefore(host, unitFile, states[soulstoneService(target.name)]);
  // (applyChanges keeps the time of a unit whose only change is [Install].)
  const { changed } = await installUnits(
    host,
    setup,
    text,
    options.inGate ? [] : activeIs(target.name, bootBefore),
  );
  const own = changed.find((c) => c.path === unitFile);
  // Asleep, the target runs beside the engine awake (docs/warm-swaps.md): stale all the same.
  const stale = targetRuns && (!previous || target.sleep !== null) &&
    (writtenBefore ||
      (own !== undefined && withoutInstall(own.before) !== withoutInstall(own.file?.content)));
  if (targetRuns && !previous && !stale) {
    const p = await probe(host, target, 2000, scope);
    if (p.state === "ready") {
      host.out(`${target.name} is already active and healthy (${p.detail}); nothing to do.\n`);
      await reconcileMarks(host, scope, sleepers);
      return EXIT.OK;
    }
  }

  const progress = new Progress(host, target.name);
  let gate: HeldAtGate | null = null;
  // Interrupted (Ctrl-C, SIGTERM): say what state the host is in; exiting drops the lock. Behind
  // the gate, the held requests go to the target as soon as it serves (systemd goes on starting
  // it), rather than waiting out the hold.
  const stopListening = options.ownSignals === false
    ? () => {}
    : host.onInterrupt(async (signal) => {
      progress.done();
      // Between engines that sleep nothing goes on in the background: systemd wakes nobody.
      const warm = previous?.sleep && target.sleep;
      host.err(
        `\nlychd swap interrupted (${signal}) while: ${progress.current() || "preparing"}.\n` +
          (warm
            ? `${target.name} is the boot engine now; ${previous.name} may be asleep and ` +
              `${target.name} not yet awake (systemd wakes no engine): \`${
                lychdLine(setup, `swap ${target.name}`)
              }\` finishes the swap${gate ? `; the gate holds requests until one serves` : ""}. `
            : `${target.name} is the boot engine now; systemd keeps starting soulstone-${target.name}.service ` +
              `in the background${previous ? ` (${previous.name} was stopped)` : ""}${
                gate ? `; the gate holds requests until it serves` : ""
              }. `) +
          `See \`${lychdLine(setup, "status")}\`${
            previous ? `; go back with \`${lychdLine(setup, `swap ${previous.name}`)}\`` : ""
          }.\n`,
      );
      await gate?.client.recover(target.name);
      // Marks are not touched here: the swap's step in flight goes on meanwhile, and a mark set
      // by what it sees half-way could outlive the wake. The next swap or stop makes them match.
      return signal === "SIGINT" ? EXIT.INTERRUPTED : EXIT.TERMINATED;
    });
  gate = await holdAtGate(host, loaded.config, setup, options, target, previous, progress);
  try {
    return await switchBehindGate(
      host,
      setup,
      text,
      bootBefore,
      options,
      target,
      previous,
      stale,
      progress,
      gate,
    );
  } catch (e) {
    // Whatever ended the swap, the gate is not left closed for its whole hold: it opens to the
    // engine that serves as soon as one does.
    await gate?.client.recover(null);
    throw e;
  } finally {
    stopListening();
    // Marks as what runs: set for each engine asleep, lifted for the rest (docs/warm-swaps.md).
    await reconcileMarks(host, scope, sleepers);
  }
}

/** The swap itself, once the gate (if any) holds requests: switch, report, roll back. */
async function switchBehindGate(
  host: Host,
  setup: Setup,
  text: string,
  bootBefore: string,
  options: SwapOptions,
  target: Engine,
  previous: Engine | null,
  stale: boolean,
  progress: Progress,
  gate: HeldAtGate | null,
): Promise<number> {
  const scope = setup.loc.systemctlScope;
  const t0 = host.now();
  const result = await switchTo(
    host,
    setup,
    text,
    bootBefore,
    options,
    target,
    previous,
    stale,
    progress,
  );
  const record = (to: string, result: SwapRecord["result"], phases: Record<string, number>) => ({
    from: previous?.name ?? null,
    to,
    result,
    phases: { ...(gate?.drainSec === undefined ? {} : { drain: gate.drainSec }), ...phases },
    at: Date.now(),
  });
  if (result.ok) {
    if (gate) {
      if (options.wait) {
        const opened = await openGate(
          host,
          gate.client,
          target.name,
          record(target.name, "ok", result.phases),
        );
        if (!opened) {
          host.err(gateLost(setup, target.name));
          return EXIT.NOT_SERVING;
        }
      } else await gate.client.recover(target.name);
    }
    // Clients waited from the drain's start: the line counts it when it waited for requests.
    const drained = gate?.drainWaited ? { from: previous!.name, ms: gate.drainSec! * 1000 } : null;
    host.out(`${report(target.name, result, drained)}\n`);
    return EXIT.OK;
  }
  host.err(`\n${target.name} failed: ${result.reason}\n`);
  host.err(`Last lines of ${soulstoneService(target.name)}'s journal:\n`);
  host.err(indent(await journalTail(host, scope, soulstoneService(target.name), 20)));

  const failed = async (message: string) => {
    await gate?.client.refuse(message, record(target.name, "failed", {}));
  };
  if (!options.rollback) {
    host.err(`Not rolling back (--no-rollback): ${target.name} is left as it is.\n`);
    await failed(`the swap to ${target.name} failed (${fmt(host.now() - t0)})`);
    return EXIT.NOT_SERVING;
  }
  if (!previous) {
    await systemctl(host, scope, "stop", soulstoneService(target.name)).catch(() => {});
    // Nothing to roll back to, but the boot engine goes back to what it was.
    await installUnits(host, setup, text, activeIs(bootBefore, bootBefore));
    host.err(
      `${
        stale ? `${target.name} served before its unit changed; it` : "No engine served before " +
          `the swap; ${target.name}`
      } is stopped now and ${bootBefore} is the boot engine. Nothing serves on ${BASE_URL} now.\n`,
    );
    await failed(`the swap to ${target.name} failed and no engine served before it`);
    return EXIT.NOT_SERVING;
  }
  host.err(`Rolling back to ${previous.name}...\n`);
  const back = await switchTo(
    host,
    setup,
    text,
    bootBefore,
    { ...options, timeoutSec: null },
    previous,
    target,
    false,
    new Progress(host, previous.name),
    // Back to what ran before, whatever holds the GPU now: it ran with it.
    false,
  );
  if (back.ok) {
    const opened = gate === null || await openGate(
      host,
      gate.client,
      previous.name,
      record(target.name, "rolled-back", back.phases),
    );
    if (!opened) host.err(gateLost(setup, previous.name));
    host.err(
      `${
        report(previous.name, back)
      }\nThe swap to ${target.name} failed; ${previous.name} serves again, as before.\n`,
    );
    return EXIT.ROLLED_BACK;
  }
  await failed(`the swap to ${target.name} failed, and the rollback to ${previous.name} too`);
  host.err(
    `The rollback failed too: ${previous.name}: ${back.reason}. Nothing serves on ${BASE_URL} now; ` +
      `see \`${lychdLine(setup, "status")}\` and \`${lychdLine(setup, "logs")}\`.\n`,
  );
  return EXIT.NOT_SERVING;
}

/**
 * `text` is lychd.yaml as it was before the swap, whose boot engine is `bootBefore`: making that
 * one active again needs no change, so the file is left exactly as the user wrote it.
 */
function activeIs(engine: string, bootBefore: string) {
  return engine === bootBefore ? [] : [{ path: ["active"], value: engine, flag: "swap" }];
}

/** The unit file was written after the service became active: it runs with an older version. */
async function startedBefore(
  host: Host,
  unitFile: string,
  props: UnitProps | undefined,
): Promise<boolean> {
  const since = parseTimestamp(props?.ActiveEnterTimestamp);
  const written = await host.modifiedAt(unitFile);
  return since !== null && written !== null && written > since;
}

/**
 * `phases`: seconds per phase (stop, start, load, warmup), for the gate's metrics; `ready`: how
 * long it took until the engine served, and the phases as the report names them (null with
 * --no-wait).
 */
type Outcome =
  | { ok: true; phases: Record<string, number>; ready: { ms: number; steps: string[] } | null }
  | { ok: false; reason: string };

/** The swap's last line; `drained`: the drain before it, which clients waited through too. */
function report(
  engine: string,
  outcome: Extract<Outcome, { ok: true }>,
  drained: { from: string; ms: number } | null = null,
): string {
  const ready = outcome.ready;
  if (ready === null) return `${engine} started (--no-wait: not waiting until it serves).`;
  const steps = drained
    ? [`drained ${drained.from} ${fmt(drained.ms)}`, ...ready.steps]
    : ready.steps;
  return `${engine} ready in ${fmt((drained?.ms ?? 0) + ready.ms)} (${steps.join(", ")})`;
}

/**
 * Open the gate to `engine`; a gate that was restarted during the swap is waited for (systemd
 * restarts it within seconds) and opened in turn. false: no gate answered.
 */
async function openGate(
  host: Host,
  client: GateControl,
  engine: string,
  record: SwapRecord,
): Promise<boolean> {
  const deadline = host.now() + GATE_START_MS;
  for (;;) {
    if (await client.open(engine, record)) return true;
    if (host.now() >= deadline || client.inProcess) return false;
    await host.sleep(250);
  }
}

function gateLost(setup: Setup, engine: string): string {
  return `${engine} serves on its engine port, but the gate did not answer, so ${BASE_URL} may ` +
    `not serve it: see \`${lychdLine(setup, "status")}\` and \`${
      lychdLine(setup, "logs gate")
    }\`.\n`;
}

/**
 * How long a gate that is (re)starting has to answer on its control folder: a gate restarted
 * during a swap may first take its whole stop timeout (TimeoutStopSec=35) to let go.
 */
const GATE_START_MS = 60_000;

interface HeldAtGate {
  client: GateControl;
  /** Seconds the drain took (undefined: no drain). */
  drainSec?: number;
  /** Whether it waited for requests in flight (rather than finding none). */
  drainWaited?: boolean;
}

/** At most one "draining" line this often. */
const DRAIN_LINE_MS = 250;

/**
 * Behind the gate: tell it to hold new requests (up to the new engine's start timeout, plus the
 * old one's stop), then wait until the old engine's requests in flight are done (drain), bounded
 * by the drain timeout. null: no gate in this setup, or it does not run (said so).
 */
async function holdAtGate(
  host: Host,
  config: LychdConfig,
  setup: Setup,
  options: SwapOptions,
  target: Engine,
  previous: Engine | null,
  progress: Progress,
): Promise<HeldAtGate | null> {
  if (!config.gate.enabled) return null;
  const folder = controlFolder(setup.loc);
  if (folder === null) {
    // A session without XDG_RUNTIME_DIR cannot reach a user gate; the gate itself finds the new
    // engine once it serves (it holds what the old one refused).
    progress.note(
      "XDG_RUNTIME_DIR is not set, so the gate's control folder cannot be reached: requests on " +
        `${BASE_URL} are not drained through this swap`,
    );
    return null;
  }
  const client = options.inGate ?? new GateClient(host, folder);
  // After `lychd stop --all` the gate is down too: 8081 would refuse every client, whatever
  // the engine does. A swap brings it back first.
  if ((await client.status()) === null && !client.inProcess) {
    await startGate(host, setup, client, progress);
  }
  const holdSec = (options.timeoutSec ?? target.settings.startTimeoutSec) +
    (previous?.settings.stopTimeoutSec ?? 0) + 30;
  await client.close(holdSec * 1000);
  if (!previous || !options.drain) {
    if (previous) {
      progress.note(
        `not draining ${previous.name} (--no-drain): its requests in flight are cut off`,
      );
    }
    return { client };
  }
  const t0 = host.now();
  const limitMs = (options.drainTimeoutSec ?? config.gate.drainTimeoutSec) * 1000;
  let inFlight = -1;
  let shownAt = -Infinity;
  for (;;) {
    const status = await client.status();
    if (status === null) {
      progress.note("the gate stopped answering; going on without the drain");
      break;
    }
    if (status.counts.inFlight === 0) break;
    if (status.counts.inFlight !== inFlight) {
      inFlight = status.counts.inFlight;
      // In the gate (on demand) the count is looked at every 10 ms: a line for every change
      // would flood its journal.
      if (host.now() - shownAt >= DRAIN_LINE_MS) {
        shownAt = host.now();
        progress.phase(`draining ${previous.name}: ${inFlight} requests in flight`);
      }
    }
    if (host.now() - t0 >= limitMs) {
      progress.note(
        `drain timeout (${fmt(limitMs)}): cutting off ${inFlight} requests still in flight, ` +
          `then stopping ${previous.name}`,
      );
      // Cut by the gate, those clients get a 502 that says so, and the old engine no client
      // connection that keeps it from exiting (llama.cpp ignores SIGTERM while one is open).
      await client.cut();
      break;
    }
    progress.tick();
    await host.sleep(client.pollMs);
  }
  const drainSec = (host.now() - t0) / 1000;
  if (inFlight > 0) progress.note(`drained ${previous.name} in ${fmt(drainSec * 1000)}`);
  return { client, drainSec, drainWaited: inFlight > 0 };
}

/** Start lychd-gate.service and wait until it answers on its control folder; or say why not. */
async function startGate(host: Host, setup: Setup, client: GateControl, progress: Progress) {
  progress.phase(`starting the gate (${GATE_SERVICE}), which was not running`);
  const scope = setup.loc.systemctlScope;
  try {
    await systemctl(host, scope, "start", GATE_SERVICE);
  } catch (e) {
    throw new LychdError(
      `the gate (${GATE_SERVICE}) does not run and would not start, so nothing could serve on ` +
        `${BASE_URL}: ${(e as Error).message}. See \`${lychdLine(setup, "logs gate")}\`.`,
      EXIT.NOT_SERVING,
    );
  }
  const deadline = host.now() + GATE_START_MS;
  while ((await client.status()) === null) {
    if (host.now() >= deadline) {
      const state = (await showUnits(host, scope, [GATE_SERVICE], ["ActiveState"]))[GATE_SERVICE];
      throw new LychdError(
        `the gate (${GATE_SERVICE}) was started but did not answer within ` +
          `${GATE_START_MS / 1000} s (it is ${state?.ActiveState ?? "unknown"}); see ` +
          `\`${lychdLine(setup, "logs gate")}\`.`,
        EXIT.NOT_SERVING,
      );
    }
    await host.sleep(100);
  }
  progress.note("the gate was not running: started it");
}

/**
 * Make `engine` the boot engine, start it (restart it if `restart`: it runs with an old unit),
 * wait until it serves.
 */
async function switchTo(
  host: Host,
  setup: Setup,
  text: string,
  bootBefore: string,
  options: SwapOptions,
  engine: Engine,
  previous: Engine | null,
  restart: boolean,
  progress: Progress,
  checkGpu = true,
): Promise<Outcome> {
  const scope = setup.loc.systemctlScope;
  const service = soulstoneService(engine.name);
  const t0 = host.now();
  await installUnits(host, setup, text, options.inGate ? [] : activeIs(engine.name, bootBefore));
  // Warm (docs/warm-swaps.md): between two engines that sleep, the old one is put to sleep, and
  // the new one woken if it sleeps. Anything that fails on the way falls back to the cold path.
  const warm = previous !== null && previous.sleep !== null && engine.sleep !== null;
  // What the engine going to sleep holds on its GPUs, read now so the pause does not wait for it.
  const usedBefore = warm && checkGpu && previous!.gpu.vendor === "nvidia"
    ? unitGpuMemory(host, scope, soulstoneService(previous!.name))
    : null;
  const asleep = engine.sleep !== null && !restart &&
    (await isAsleep(host, engine, scope)) === true;
  progress.phase(
    restart
      ? `${warm ? `putting ${previous!.name} to sleep, then ` : ""}restarting ${engine.name} ` +
        "(its unit changed)"
      : warm
      ? `putting ${previous!.name} to sleep, then ${asleep ? "waking" : "starting"} ${engine.name}`
      : previous
      ? `stopping ${previous.name}, then ${asleep ? "waking" : "starting"} ${engine.name}`
      : `${asleep ? "waking" : "starting"} ${engine.name}`,
  );
  const before = (await showUnits(host, scope, [service], ["NRestarts"]))[service];
  const all = resolveEngines(resolveConfig(text, setup.configPath, []).config);
  const beside = await runningBeside(host, setup, all, engine);
  const sleepers = all.filter((e) => e.sleep !== null).map((e) => e.name);
  // nvidia-smi lists an engine asleep too (it keeps its CUDA context), and the check wants no
  // process on the GPU at all: with engines that sleep running beside one that sleeps, it is
  // /is_sleeping that says the memory was given back.
  const sleepersBeside = engine.sleep !== null && beside.some((e) => e.engine.sleep !== null);
  const nvidia = checkGpu && engine.gpu.vendor === "nvidia";
  const gpuCheck = nvidia && !sleepersBeside && !asleep;
  if (nvidia && !gpuCheck) {
    progress.note(
      "no GPU check before the start with engines asleep (nvidia-smi lists them too)",
    );
  }
  if (checkGpu && engine.gpu.vendor === "amd") {
    // No captured output of the ROCm tools to build a parser on: say so rather than guess.
    progress.note("GPU memory not checked: lychd checks it on NVIDIA GPUs only");
  }
  let stopping = restart ? engine : previous;
  const warmPhases: Record<string, number> = {};
  let wokeAt: number | null = null;
  try {
    // An engine asleep whose unit changed since it started may have moved port: what answers on
    // its new port may be another engine. It serves nothing; it is stopped, not woken later.
    const stale = beside.filter((b) => b.stale && b.engine.name !== previous?.name);
    if (stale.length > 0) {
      progress.note(`stopping ${stale.map((b) => b.engine.name).join(", ")} (unit changed)`);
      await systemctl(host, scope, "stop", ...stale.map((b) => soulstoneService(b.engine.name)));
    }
    const noRoom = warm ? await whyNoRoomToSleep(host, setup, text, previous!, beside) : null;
    let slept = false;
    if (noRoom) {
      progress.note(`${previous!.name} is stopped, not put to sleep: ${noRoom}`);
      await systemctl(host, scope, "stop", soulstoneService(previous!.name));
    } else if (warm) {
      const t = host.now();
      await markAsleep(host, scope, previous!.name);
      const sleep = await putToSleep(host, previous!, previous!.settings.stopTimeoutSec * 1000);
      const notSlept = sleep.ok
        ? await memoryNotReleased(host, scope, previous!, usedBefore, progress)
        : sleep.reason;
      if (notSlept === null) {
        slept = true;
        warmPhases.sleep = (host.now() - t) / 1000;
        progress.note(`${previous!.name} asleep (level ${previous!.sleep!.level})`);
        if (!restart) stopping = null;
      } else {
        progress.note(`${previous!.name} did not go to sleep (${notSlept}): stopping it`);
        await systemctl(host, scope, "stop", soulstoneService(previous!.name));
      }
    } else if (stopping && !options.inGate) {
      await stopWithConfiguredTimeout(host, stopping, progress);
    }
    if (gpuCheck) {
      // The GPU memory check goes between the stop and the start, so the old engines are stopped
      // on their own first (a start alone would stop them through Conflicts=, with no gap).
      const units = [...(stopping ? [stopping] : []), ...beside.map((b) => b.engine)]
        .map((e) => soulstoneService(e.name));
      if (units.length > 0) await systemctl(host, scope, "stop", ...new Set(units));
      const memory = await gpuMemoryFor(host, engine, progress);
      if (memory) {
        progress.done();
        return { ok: false, reason: memory };
      }
    }
    // Only the engines that stay asleep keep their mark: the target would not start with one,
    // and one stopped (by this swap, or by Conflicts= as the target starts) may be started by
    // hand later.
    const staysAsleep = new Set<string>(
      engine.sleep === null ? [] : [
        ...beside.filter((b) => b.engine.sleep && !b.stale && b.engine.name !== previous?.name)
          .map((b) => b.engine.name),
        ...(slept ? [previous!.name] : []),
      ],
    );
    // A target asleep keeps its mark until it answered its wake: for SGLang the mark is all that
    // says it is released, so a swap cut off before that must leave it marked.
    await clearAsleepMarks(
      host,
      scope,
      sleepers.filter((n) => !staysAsleep.has(n) && !(asleep && n === engine.name)),
    );
    let woken = false;
    if (asleep) {
      const t = host.now();
      const w = await wake(host, engine, engine.settings.startTimeoutSec * 1000);
      if (w.ok) {
        woken = true;
        wokeAt = host.now();
        warmPhases.wake = (wokeAt - t) / 1000;
        progress.note(`${engine.name} awake`);
      } else progress.note(`${engine.name} did not wake (${w.reason}): restarting it`);
      // Awake, or about to be restarted: either way its start must not be skipped.
      await clearAsleepMarks(host, scope, [engine.name]);
    }
    if (!woken) {
      // Returns once the container runs; Conflicts= has stopped the previous engine before that.
      // A target asleep that would not wake runs: restart it. One the GPU check stopped: start.
      const verb = asleep || (restart && !gpuCheck) ? "restart" : "start";
      await systemctl(host, scope, verb, service);
    }
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
  const stoppedUnit = stopping ? soulstoneService(stopping.name) : null;
  const after = await showUnits(
    host,
    scope,
    stoppedUnit && stoppedUnit !== service ? [stoppedUnit, service] : [service],
    props,
  );
  // A restart's stop shows in the same unit's timestamps.
  const stoppedAt = stoppedUnit ? parseTimestamp(after[stoppedUnit]?.InactiveEnterTimestamp) : null;
  // Woken, it has been up since long before: it counts from when it woke.
  const upAt = wokeAt ?? parseTimestamp(after[service]?.ActiveEnterTimestamp) ?? host.now();
  const killed = stoppedUnit && stoppedUnit !== service ? wasKilled(after[stoppedUnit]) : false;
  if (previous && !restart && stopping) {
    progress.note(`${previous.name} stopped${killed ? " (it did not exit in time: killed)" : ""}`);
  }
  if (previous && killed) {
    // Killed on purpose by the stop timeout: not a failure worth keeping on the unit.
    await systemctl(host, scope, "reset-failed", soulstoneService(previous.name)).catch(() => {});
  }
  if (wokeAt === null) progress.note("container up");

  if (!options.wait) {
    progress.done();
    return { ok: true, phases: {}, ready: null };
  }

  const timeoutMs = (options.timeoutSec ?? engine.settings.startTimeoutSec) * 1000;
  const deadline = t0 + timeoutMs;
  const restartsBefore = Number(before?.NRestarts ?? 0) || 0;
  let last: Probe | null = null;
  let lastUnitCheck = host.now();
  let served: string[] = [];
  for (;;) {
    const p = await probe(host, engine, 2000, scope);
    if (p.state === "ready") {
      served = p.models;
      break;
    }
    if (p.detail !== last?.detail) progress.phase(phaseText(p));
    last = p;
    progress.tick();
    if (host.now() - lastUnitCheck >= UNIT_CHECK_MS) {
      lastUnitCheck = host.now();
      const unit = (await showUnits(host, scope, [service], [
        "ActiveState",
        "SubState",
        "NRestarts",
        "ExecMainStatus",
      ]))[service];
      // The engine's own latest word (download or load progress) next to the elapsed time.
      const line = (await journalTail(host, scope, service, 1)).trim();
      if (line && !line.startsWith("(journalctl failed")) progress.log(line);
      const state = unit?.ActiveState;
      // An engine that exits while starting is a failed swap at once: Restart=on-failure is for
      // an engine that crashes after it served, not for one that cannot start.
      const restarts = (Number(unit?.NRestarts ?? 0) || 0) - restartsBefore;
      if (
        state === "failed" || state === "inactive" || unit?.SubState === "auto-restart" ||
        restarts > 0
      ) {
        progress.done();
        const status = unit?.ExecMainStatus && unit.ExecMainStatus !== "0"
          ? ` with status ${unit.ExecMainStatus}`
          : "";
        return {
          ok: false,
          reason: state === "failed" || state === "inactive"
            ? `the unit is ${state} (last answer on port ${engine.hostPort}: ${p.detail})`
            : `the engine exited${status} while starting (systemd would restart it; a swap ` +
              `does not wait for that). Last answer on port ${engine.hostPort}: ${p.detail}`,
        };
      }
    }
    if (host.now() >= deadline) {
      progress.done();
      return {
        ok: false,
        reason: `not ready after ${fmt(timeoutMs)} (last answer on ${
          engineUrl(engine)
        }${engine.healthPath}: ${p.detail})`,
      };
    }
    await host.sleep(POLL_MS);
  }
  const readyAt = host.now();
  let warmMs: number | null = null;
  if (engine.settings.warmup) {
    progress.phase("warming up: one short completion");
    // The model as the engine lists it: the probe that found it ready has just asked.
    const model = engine.model !== null && served.includes(engine.model) ? engine.model : served[0];
    const w = await warmUp(host, engine, model, Math.max(30_000, deadline - host.now()));
    if (!w.ok) {
      progress.done();
      return {
        ok: false,
        reason:
          `healthy, but the warm-up request (one short completion on ${engineUrl(engine)}/v1/` +
          `completions) failed: ${w.why}`,
      };
    }
    warmMs = w.ms;
  }
  progress.done();
  const steps = [
    ...(warmPhases.sleep === undefined
      ? []
      : [`old engine asleep ${fmt(warmPhases.sleep * 1000)}`]),
    ...(stopping
      ? [
        `${restart ? "stopped" : "old engine stopped"} ${fmt((stoppedAt ?? upAt) - t0)}${
          killed ? " (killed)" : ""
        }`,
      ]
      : []),
    wokeAt === null
      ? `container up ${fmt(Math.max(0, upAt - (stoppedAt ?? t0)))}`
      : `woken ${fmt(warmPhases.wake! * 1000)}`,
    `model loaded ${fmt(Math.max(0, readyAt - upAt))}`,
    ...(warmMs === null ? [] : [`first request ${fmt(warmMs)}`]),
  ];
  const stoppedMs = stopping ? (stoppedAt ?? upAt) - t0 : null;
  return {
    ok: true,
    ready: { ms: host.now() - t0, steps },
    phases: {
      ...warmPhases,
      ...(stoppedMs === null ? {} : { stop: stoppedMs / 1000 }),
      ...(wokeAt === null ? { start: Math.max(0, upAt - (stoppedAt ?? t0)) / 1000 } : {}),
      load: Math.max(0, readyAt - upAt) / 1000,
      ...(warmMs === null ? {} : { warmup: warmMs / 1000 }),
    },
  };
}

/**
 * null when the GPU memory of the engine that said it sleeps went down (or cannot be told, which
 * is said), else why its sleep does not count: an engine that answered /sleep but kept its
 * memory would make the next one fail its load (docs/warm-swaps.md, "Checking the sleep").
 */
async function memoryNotReleased(
  host: Host,
  scope: string[],
  engine: Engine,
  usedBefore: Promise<number | string> | null,
  progress: Progress,
): Promise<string | null> {
  if (usedBefore === null) return null;
  const before = await usedBefore;
  const release = typeof before === "string"
    ? { state: "unknown" as const, why: before }
    : await waitForRelease(host, scope, soulstoneService(engine.name), before);
  if (release.state === "unknown") {
    progress.note(`GPU memory after the sleep not checked: ${release.why}`);
    return null;
  }
  if (release.state === "released") return null;
  return `it said so, but its processes still hold ${release.afterMiB} MiB on the GPU, of ` +
    `${release.beforeMiB} MiB before`;
}

/** The engines that run beside `target` now, and whether each one's unit changed since it started. */
async function runningBeside(
  host: Host,
  setup: Setup,
  engines: Engine[],
  target: Engine,
): Promise<{ engine: Engine; stale: boolean }[]> {
  const others = engines.filter((e) => e.name !== target.name);
  const states = await showUnits(
    host,
    setup.loc.systemctlScope,
    others.map((e) => soulstoneService(e.name)),
    ["ActiveState", "ActiveEnterTimestamp"],
  );
  const out: { engine: Engine; stale: boolean }[] = [];
  for (const e of others) {
    const props = states[soulstoneService(e.name)];
    if (!RUNNING.includes(props?.ActiveState)) continue;
    const unitFile = `${setup.loc.quadletDir}/soulstone-${e.name}.container`;
    out.push({ engine: e, stale: await startedBefore(host, unitFile, props) });
  }
  return out;
}

/**
 * Whether `previous` may sleep as the swap leaves it (null), or why it is stopped instead: its
 * unit changed since it started (its port may have moved), gate.max_asleep, and at level 1 its
 * weights against the host's available memory.
 */
async function whyNoRoomToSleep(
  host: Host,
  setup: Setup,
  text: string,
  previous: Engine,
  beside: { engine: Engine; stale: boolean }[],
): Promise<string | null> {
  if (beside.find((b) => b.engine.name === previous.name)?.stale) {
    return "its unit changed since it started (its port may have moved)";
  }
  const { config } = resolveConfig(text, setup.configPath, []);
  let asleepNow = 0;
  for (const b of beside) {
    if (b.stale || !b.engine.sleep || b.engine.name === previous.name) continue;
    if ((await isAsleep(host, b.engine, setup.loc.systemctlScope)) === true) asleepNow++;
  }
  const where = previous.model === null ? null : modelLocation(
    config.modelCache ?? setup.loc.modelCache,
    previous.model,
    previous.cartridge?.download(previous.model) != null,
  );
  return whyNotSleep({
    level: previous.sleep!.level,
    weightsBytes: where === null ? null : await host.diskUsage(where).catch(() => null),
    availableBytes: await host.memAvailable(),
    asleepAfter: asleepNow + 1,
    maxAsleep: config.gate.maxAsleep,
  });
}

/**
 * Wait for the GPU memory `engine` needs: null when it is free (or cannot be checked: the swap
 * goes on and says so), else why the swap must not start it.
 */
async function gpuMemoryFor(
  host: Host,
  engine: Engine,
  progress: Progress,
): Promise<string | null> {
  progress.phase(`checking that ${engine.name}'s GPU memory is free`);
  const m = await waitForGpuMemory(host, engine);
  if (m.state === "unknown") {
    progress.note(`GPU memory not checked: ${m.why}`);
    return null;
  }
  if (m.state === "free") {
    if (m.waitedMs > 0) progress.note(`GPU memory free after ${fmt(m.waitedMs)}`);
    return null;
  }
  return `GPU memory is still held ${fmt(m.waitedMs)} after every lychd engine stopped, by a ` +
    `process that is not lychd's: ${describeHolders(m.holders)}. ${engine.name} was not ` +
    "started (it would fail its load for lack of memory). Stop that process (see `nvidia-smi`) " +
    "and swap again.";
}

/**
 * Podman fixes a container's stop timeout when it creates it; systemd reads TimeoutStopSec= from
 * the unit as it is now. After stop_timeout changed under a running engine the two disagree,
 * and systemd would kill the engine (or Podman kill it early). Then lychd stops the container
 * itself with the configured timeout, before systemd's stop finds it gone.
 */
async function stopWithConfiguredTimeout(host: Host, engine: Engine, progress: Progress) {
  const container = `soulstone-${engine.name}`;
  const r = await host.run("podman", [
    "container",
    "inspect",
    "--format",
    "{{.Config.StopTimeout}}",
    container,
  ]);
  const baked = Number(r.stdout.trim());
  const wanted = engine.settings.stopTimeoutSec;
  if (r.code !== 0 || !Number.isFinite(baked) || baked === wanted) return;
  progress.note(
    `${engine.name}'s container was created with a ${baked} s stop timeout; stopping it with ` +
      `the configured ${wanted} s`,
  );
  await host.run("podman", ["stop", "--time", String(wanted), container]);
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
    case "asleep":
      return "asleep";
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
    // Progress goes to stderr: whether stdout is a terminal says nothing about it.
    this.tty = host.isTerminal("stderr");
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

  log(raw: string) {
    const line = printable(raw);
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
