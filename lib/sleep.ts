/**
 * Putting an engine that sleeps to sleep, and waking it (docs/warm-swaps.md; the routes and their
 * hazards: docs/engines.md, "Sleep and wake"), through vLLM's routes or SGLang's; and the marks
 * that keep systemd from restarting one asleep awake. Only after the gate has drained it: vLLM
 * aborts what is in flight (or crashed, #45520), SGLang's scheduler wants to be idle, and vLLM
 * answers a request sent while it sleeps with a hang.
 */
import type { Host } from "./host.ts";
import { engineUrl, isAsleep } from "./readiness.ts";
import { showUnits, systemctl } from "./systemctl.ts";
import { asleepMark, type Engine, soulstoneService } from "./units/model.ts";

export type SleepResult = { ok: true } | { ok: false; reason: string };

/** How often the engine is asked whether it sleeps (or is awake) after it was told to. */
const CONFIRM_POLL_MS = 50;

/**
 * Sleep at the engine's level. vLLM: confirmed with /is_sleeping. SGLang: its answer is all it
 * says (no route tells); on NVIDIA the swap then checks that the GPU memory went down.
 */
export async function putToSleep(
  host: Host,
  engine: Engine,
  timeoutMs: number,
): Promise<SleepResult> {
  if (engine.sleep!.api === "sglang") {
    // No tags: weights, KV cache and CUDA graphs; the weights stay in host RAM (CPU backup).
    const r = await post(host, engine, "/release_memory_occupation", {}, timeoutMs);
    return r ? { ok: false, reason: `/release_memory_occupation: ${r}` } : { ok: true };
  }
  const level = engine.sleep!.level;
  const r = await post(host, engine, `/sleep?level=${level}`, {}, timeoutMs);
  if (r) return { ok: false, reason: `/sleep?level=${level}: ${r}` };
  return await confirm(host, engine, true, timeoutMs);
}

/** Wake: the weights back (reloaded from disk at level 2), then the KV cache; confirm. */
export async function wake(host: Host, engine: Engine, timeoutMs: number): Promise<SleepResult> {
  if (engine.sleep!.api === "sglang") {
    // Awake once it answers; the swap's probe and warm-up follow, as for any engine.
    const r = await post(host, engine, "/resume_memory_occupation", {}, timeoutMs);
    return r ? { ok: false, reason: `/resume_memory_occupation: ${r}` } : { ok: true };
  }
  const steps: [string, unknown][] = engine.sleep!.level === 1 ? [["/wake_up", {}]] : [
    ["/wake_up?tags=weights", {}],
    ["/collective_rpc", { method: "reload_weights" }],
    ["/wake_up?tags=kv_cache", {}],
    ["/reset_prefix_cache", {}],
  ];
  for (const [path, body] of steps) {
    const r = await post(host, engine, path, body, timeoutMs);
    if (r) return { ok: false, reason: `${path}: ${r}` };
  }
  return await confirm(host, engine, false, timeoutMs);
}

/** null when the engine answered 200, else what went wrong. */
async function post(
  host: Host,
  engine: Engine,
  path: string,
  body: unknown,
  timeoutMs: number,
): Promise<string | null> {
  const r = await host.httpPostJson(`${engineUrl(engine)}${path}`, body, timeoutMs);
  if ("error" in r) return r.error;
  return r.status === 200 ? null : `${r.status} ${r.body.slice(0, 200)}`.trim();
}

async function confirm(
  host: Host,
  engine: Engine,
  asleep: boolean,
  timeoutMs: number,
): Promise<SleepResult> {
  const until = host.now() + timeoutMs;
  let last: boolean | null = null;
  while (true) {
    last = await isAsleep(host, engine, undefined);
    if (last === asleep) return { ok: true };
    // Gone (it died on /sleep, vllm #45520): no use waiting for an answer.
    if (last === null && "error" in await host.httpGet(`${engineUrl(engine)}/health`, 2000)) {
      return { ok: false, reason: "the engine went away (its port does not answer)" };
    }
    if (host.now() >= until) break;
    await host.sleep(CONFIRM_POLL_MS);
  }
  return {
    ok: false,
    reason: `/is_sleeping says ${
      last === null ? "nothing (the engine does not answer)" : `is_sleeping: ${last}`
    } after ${Math.round(timeoutMs / 1000)} s`,
  };
}

/** What decides whether the engine swapped away from may sleep, or is stopped instead. */
export interface SleepRoom {
  level: 1 | 2;
  /** Its weights on disk (what level 1 keeps in host RAM); null: not known. */
  weightsBytes: number | null;
  /** The host's available memory now; null: not known. */
  availableBytes: number | null;
  /** Engines asleep after this swap if it sleeps (itself included). */
  asleepAfter: number;
  maxAsleep: number;
}

/** Level 1 keeps this share of the host's available memory free for everything else. */
export const RAM_MARGIN = 0.1;

/**
 * Whether it may sleep: within max_asleep, and at level 1 with its weights fitting in the host's
 * available memory (less a margin). null: it may; else why it is stopped instead.
 */
export function whyNotSleep(room: SleepRoom): string | null {
  if (room.asleepAfter > room.maxAsleep) {
    return `at most ${room.maxAsleep} engines may sleep at once (gate.max_asleep), and ` +
      `${room.asleepAfter - 1} already do`;
  }
  if (room.level !== 1 || room.weightsBytes === null || room.availableBytes === null) return null;
  const usable = room.availableBytes * (1 - RAM_MARGIN);
  if (room.weightsBytes <= usable) return null;
  const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;
  return `its weights (${gib(room.weightsBytes)}) would not fit in the host's available memory ` +
    `(${gib(room.availableBytes)}, of which lychd leaves ${RAM_MARGIN * 100} % free) at sleep ` +
    "level 1";
}

/**
 * An engine asleep must not come back awake by itself: systemd restarts a crashed engine
 * (Restart=on-failure), and awake it would load its weights beside the engine that serves. Its
 * unit's ExecCondition= skips any start while the manager's environment says it sleeps
 * (docs/warm-swaps.md, "A crash while asleep"). Set before /sleep is sent, so a crash on the way
 * to sleep is covered too.
 */
export async function markAsleep(host: Host, scope: string[], engine: string): Promise<void> {
  await systemctl(host, scope, "set-environment", `${asleepMark(engine)}=1`);
}

/** Lift the mark: once an engine answered its wake, before it starts, and once it is stopped. */
export async function clearAsleepMarks(
  host: Host,
  scope: string[],
  engines: string[],
): Promise<void> {
  if (engines.length > 0) {
    await systemctl(host, scope, "unset-environment", ...engines.map(asleepMark));
  }
}

/**
 * Make the marks match what runs, whatever a swap or stop did on the way (an early return, an
 * error): an engine running asleep has its mark; one stopped, or running awake, has none.
 * One between states (activating: maybe systemd's restart of one that crashed) is left as it is.
 * Best effort: what fails here is left to the next swap.
 */
export async function reconcileMarks(
  host: Host,
  scope: string[],
  sleepers: Engine[],
): Promise<void> {
  if (sleepers.length === 0) return;
  try {
    const states = await showUnits(
      host,
      scope,
      sleepers.map((e) => soulstoneService(e.name)),
      ["ActiveState"],
    );
    const set: string[] = [];
    const unset: string[] = [];
    for (const e of sleepers) {
      const state = states[soulstoneService(e.name)]?.ActiveState;
      if (state === "inactive" || state === "failed") unset.push(e.name);
      else if (state === "active") {
        const asleep = await isAsleep(host, e, scope);
        if (asleep === true) set.push(e.name);
        else if (asleep === false) unset.push(e.name);
      }
    }
    if (set.length > 0) {
      await systemctl(host, scope, "set-environment", ...set.map((n) => `${asleepMark(n)}=1`));
    }
    await clearAsleepMarks(host, scope, unset);
  } catch {
    // systemd unreachable: nothing to reconcile with.
  }
}
