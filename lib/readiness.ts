/**
 * Is the engine really serving (on 8081, or on its own port behind the gate)? Its health path must answer 200, and then
 * /v1/models must list the configured model. Engines differ in how they get there (docs/engines.md,
 * tests/fixtures/llama.cpp-b10587): llama.cpp opens its port before loading and answers 503
 * "Loading model" (or, with a small model, goes from refused straight to 200); SGLang lists
 * /v1/models before /health is 200; vLLM opens its port only when ready.
 */
import type { Host } from "./host.ts";
import { type SleepApi, STANDARD_PORT } from "./engines.ts";
import { printable } from "./text.ts";
import { asleepMark } from "./units/model.ts";

/** "asleep": an engine that sleeps, alive and healthy but without its weights: it serves nothing. */
export type ProbeState = "down" | "loading" | "wrong-model" | "ready" | "asleep";

export interface Probe {
  state: ProbeState;
  /** Human detail: "connection refused", "503 Loading model", "serves x, not y". */
  detail: string;
  models: string[];
}

export interface ProbeTarget {
  /** The loopback port the engine is published on. */
  hostPort: number;
  healthPath: string;
  /** The model /v1/models must list; null = health alone decides. */
  model: string | null;
  /** An engine that sleeps answers /health asleep too: it is asked whether it sleeps. */
  sleep?: { api: SleepApi } | null;
  /** Its name: SGLang's sleep is told by lychd's mark, which is named after it. */
  name?: string;
}

/** Where clients reach lychd: the gate, or the active engine itself. */
export const BASE_URL = `http://127.0.0.1:${STANDARD_PORT}`;

export function engineUrl(target: { hostPort: number }): string {
  return `http://127.0.0.1:${target.hostPort}`;
}

/**
 * What the engine answers now. `scope` (systemctl's, for the mark of an SGLang asleep) is needed
 * only for an engine that sleeps through SGLang's routes; without it, one is never "ready".
 */
export async function probe(
  host: Host,
  target: ProbeTarget,
  timeoutMs = 2000,
  scope?: string[],
): Promise<Probe> {
  const base = engineUrl(target);
  // SGLang released is not asked anything: its /health may run a generation (docs/engines.md).
  // Its mark is read once, here; vLLM is asked below, after /health.
  const marked = target.sleep?.api === "sglang" ? await isAsleep(host, target, scope) : undefined;
  if (marked === true) return { state: "asleep", detail: "asleep (lychd's mark)", models: [] };
  const health = await host.httpGet(`${base}${target.healthPath}`, timeoutMs);
  if ("error" in health) {
    return {
      state: "down",
      detail: health.error === "refused" ? "connection refused" : health.error,
      models: [],
    };
  }
  if (health.status !== 200) {
    return {
      state: "loading",
      detail: `${health.status} ${errorMessage(health.body)}`.trim(),
      models: [],
    };
  }
  if (target.sleep) {
    // vLLM answers /health and /v1/models asleep too; a request sent then may hang (vllm #45268).
    const asleep = marked !== undefined ? marked : await isAsleep(host, target, scope, timeoutMs);
    if (asleep !== false) {
      return {
        state: asleep ? "asleep" : "loading",
        detail: asleep
          ? "asleep"
          : target.sleep.api === "vllm"
          ? "healthy, /is_sleeping not answering"
          : "healthy, but whether it sleeps is not known",
        models: [],
      };
    }
  }
  const listed = await host.httpGet(`${base}/v1/models`, timeoutMs);
  const models = "error" in listed || listed.status !== 200 ? [] : modelIds(listed.body);
  if (target.model === null) return { state: "ready", detail: "healthy", models };
  if ("error" in listed || listed.status !== 200) {
    const why = "error" in listed ? listed.error : `${listed.status}`;
    return { state: "loading", detail: `healthy, /v1/models not answering yet (${why})`, models };
  }
  if (!models.includes(target.model)) {
    return {
      state: "wrong-model",
      detail: `serves ${models.length ? models.join(", ") : "no model"}, not ${target.model}`,
      models,
    };
  }
  return { state: "ready", detail: `serves ${target.model}`, models };
}

/** Model ids (and aliases, as llama.cpp lists them) from an OpenAI /v1/models answer. */
export function modelIds(body: string): string[] {
  try {
    const data = JSON.parse(body)?.data;
    if (!Array.isArray(data)) return [];
    return data.flatMap((m: { id?: unknown; aliases?: unknown }) => [
      ...(typeof m.id === "string" ? [m.id] : []),
      ...(Array.isArray(m.aliases)
        ? m.aliases.filter((a): a is string => typeof a === "string")
        : []),
    ]).filter((v, i, all) => all.indexOf(v) === i);
  } catch {
    return [];
  }
}

function errorMessage(body: string): string {
  try {
    const j = JSON.parse(body);
    return String(j?.error?.message ?? j?.error ?? j?.message ?? "").slice(0, 80);
  } catch {
    return body.trim().split("\n")[0].slice(0, 80);
  }
}

export type WarmUp = { ok: true; ms: number } | { ok: false; why: string };

/**
 * One short completion, sent once the engine is healthy and before clients are told it is ready:
 * its first request pays for lazy initialisation (kernels picked, graphs captured, caches
 * filled) so that a client's does not. It must succeed: an engine that cannot answer one
 * completion does not serve.
 */
export async function warmUp(
  host: Host,
  target: { hostPort: number },
  model: string | undefined,
  timeoutMs: number,
): Promise<WarmUp> {
  const t0 = host.now();
  const r = await host.httpPostJson(`${engineUrl(target)}/v1/completions`, {
    ...(model ? { model } : {}),
    prompt: "Hello",
    max_tokens: 4,
    temperature: 0,
  }, timeoutMs);
  const ms = host.now() - t0;
  if ("error" in r) return { ok: false, why: r.error };
  const said = printable(r.body).replace(/\s+/g, " ").trim().slice(0, 200);
  if (r.status !== 200) return { ok: false, why: `HTTP ${r.status}: ${said}` };
  try {
    const choices = JSON.parse(r.body)?.choices;
    if (Array.isArray(choices) && choices.length > 0) return { ok: true, ms };
  } catch { /* not JSON: said below */ }
  return { ok: false, why: `HTTP 200 without a completion: ${said}` };
}

/**
 * Whether an engine that sleeps is asleep now; null when that is not known. vLLM says so on
 * /is_sleeping (null: down, or no route). SGLang has no such route: lychd's mark in the
 * manager's environment says it (docs/warm-swaps.md, "A crash while asleep"), read with
 * `systemctl show-environment` (null without a scope or a name, or when systemctl fails).
 */
export async function isAsleep(
  host: Pick<Host, "httpGet" | "run">,
  target: { hostPort: number; name?: string; sleep?: { api: SleepApi } | null },
  scope: string[] | undefined,
  timeoutMs = 2000,
): Promise<boolean | null> {
  if (target.sleep?.api === "sglang") {
    if (scope === undefined || target.name === undefined) return null;
    const r = await host.run("systemctl", [...scope, "show-environment"]);
    if (r.code !== 0) return null;
    return r.stdout.split("\n").includes(`${asleepMark(target.name)}=1`);
  }
  const r = await host.httpGet(`${engineUrl(target)}/is_sleeping`, timeoutMs);
  if ("error" in r || r.status !== 200) return null;
  try {
    const v = JSON.parse(r.body)?.is_sleeping;
    return typeof v === "boolean" ? v : null;
  } catch {
    return null;
  }
}
