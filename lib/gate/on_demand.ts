/**
 * On demand (gate.on_demand): a request whose `model` names another configured engine's model
 * (or the engine's name) waits for that engine, and the gate swaps to it through the same
 * drain/hold path as `lychd swap`.
 *
 * When to swap (docs/gate.md, "On demand: when it swaps"): the oldest held request names the
 * next engine (first come, first served among engines, so none starves). The active engine A
 * goes once it has nothing to do: nothing in flight and no request for it for a quiet window that
 * grows with what a swap to A costs and shrinks with the number of requests waiting for others
 * (quietMs), provided it has served at least as long as that swap took (so, whatever the clients
 * do, no more than half the time goes to swapping). While requests for A keep coming, A stays
 * `minResidencyMs` (two clients alternating two models must not thrash the GPU): so a request for
 * B waits at most min_residency, then A's drain and the swap.
 *
 * An engine whose swap failed is not tried again at once: any API user could otherwise take the
 * working engine away, again and again, by naming a model that cannot start. It is refused with a
 * 503 for a back-off that doubles with each failure (BACKOFF_MS up to BACKOFF_MAX_MS).
 */
import { CLIENT_GONE, type Forwarding, type Gate, openAiError } from "./proxy.ts";
import { scanModel } from "./model_scan.ts";
import type { Engine } from "../units/model.ts";

/**
 * The quiet window: an engine with nothing in flight and no request for this long may be swapped
 * out before its residency is over. A quarter of what the swap to it took (its stop, start, load
 * and warm-up), between QUIET_MIN_MS and QUIET_MAX_MS (QUIET_MAX_MS before one was timed): a
 * client that sends its next request right after its last answer is not left behind by a cheap
 * swap, and an engine that is expensive to bring back (a real GPU model loads for tens of
 * seconds) is given away only after a longer quiet.
 */
export const QUIET_MIN_MS = 250;
export const QUIET_MAX_MS = 2000;
/**
 * That window is for one request waiting for another engine: with n waiting it is 1/n of it, n at
 * most QUIET_DIVISOR_MAX. Each of them waits out the window, while a client of the engine that
 * goes, left behind, waits about one swap there and one back: the more wait, the less a possible
 * late client of the engine that goes is worth waiting for. Capped, so that a client that keeps
 * many requests waiting cannot make the window vanish for the clients of the engine that serves.
 */
export const QUIET_DIVISOR_MAX = 4;

/** How long a request body is read for its `model` at most (an image request is large). */
export const MODEL_SCAN_BYTES = 32 << 20;

/** After a failed swap to an engine: refused for this long, doubling with each failure. */
export const BACKOFF_MS = 30_000;
export const BACKOFF_MAX_MS = 15 * 60_000;

/**
 * A streaming request (`"stream": true`) with no answer after this long gets its `200` and SSE
 * comment lines while it waits (every STREAM_BEAT_MS), so a chat UI or a proxy that gives up on a
 * silent connection after 30-60 s keeps waiting for an engine that loads for minutes. Its answer
 * then follows in the same stream: the engine's events, or one `data: {"error": ...}` event (how
 * OpenAI's clients read an error in a stream) if it is refused or the engine answers an error.
 */
export const STREAM_AFTER_MS = 5000;
export const STREAM_BEAT_MS = 10_000;

export interface OnDemandOptions {
  minResidencyMs: number;
  /** Run a swap to `engine` (drain, stop, start, ready, open); true if it serves. */
  swap: (engine: string) => Promise<boolean>;
  log: (line: string) => void;
  now?: () => number;
  /** STREAM_AFTER_MS and STREAM_BEAT_MS (tests make them short). */
  streamAfterMs?: number;
  streamBeatMs?: number;
}

interface Failed {
  count: number;
  /** Refused until then (ms, `now()`'s clock). */
  until: number;
}

export class OnDemand {
  #byModel = new Map<string, string[]>();
  #activeSince: number;
  #lastFor = new Map<string, number>();
  #swapping = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #now: () => number;
  #failed = new Map<string, Failed>();
  /** When the last request in flight ended (the gate's onIdle). */
  #idleAt = 0;
  /** What the last successful swap to each engine took (ms): its stop, start, load, warm-up. */
  #cost = new Map<string, number>();
  /** Swaps started, for tests and the log. */
  swaps = 0;

  constructor(readonly gate: Gate, readonly engines: Engine[], readonly options: OnDemandOptions) {
    for (const e of engines) {
      for (const id of new Set([e.name, ...(e.model ? [e.model] : [])])) {
        this.#byModel.set(id, [...(this.#byModel.get(id) ?? []), e.name]);
      }
    }
    this.#now = options.now ?? Date.now;
    this.#activeSince = this.#now();
    // Decide when a request has started to wait, not before: only then is it in the queue.
    gate.onHold = () => this.schedule();
    // An engine whose last request has ended may be idle now: look again once it has been quiet.
    gate.onIdle = () => {
      this.#idleAt = this.#now();
      this.schedule();
    };
  }

  /**
   * How long `engine` must have nothing to do before it may go, with `waiting` requests held for
   * other engines (see QUIET_MIN_MS and QUIET_DIVISOR_MAX).
   */
  quietMs(engine: string | null = this.gate.target(), waiting = 1): number {
    const cost = this.#cost.get(engine ?? "");
    const one = cost === undefined
      ? QUIET_MAX_MS
      : Math.min(QUIET_MAX_MS, Math.max(QUIET_MIN_MS, cost / 4));
    return one / Math.min(QUIET_DIVISOR_MAX, Math.max(1, waiting));
  }

  /**
   * The engine a model name stands for (a model id or an engine's name), or null. Two engines
   * may serve one model: then the active one, if it is one of them, else the first configured.
   */
  engineFor(model: string): string | null {
    const names = this.#byModel.get(model) ?? [];
    const current = this.gate.target();
    return current !== null && names.includes(current) ? current : names[0] ?? null;
  }

  async handle(req: Request, at: Forwarding = {}): Promise<Response> {
    const url = new URL(req.url);
    if (req.method === "GET" && url.pathname === "/v1/models") {
      this.gate.countAnswer(200);
      return this.models();
    }
    let wants: string | null = null;
    let forward = req;
    let buffered = 0;
    let stream = false;
    // The bytes read stay counted until the request is done with them (a streamed hold outlives
    // this function).
    const release = () => this.gate.budget.give(buffered);
    let answer: Promise<Response> | null = null;
    try {
      if (req.method === "POST" && req.body !== null && isJson(req)) {
        // A request that would have to wait finds out first whether there is room.
        const full = this.gate.isOpen() ? null : this.gate.queueFull();
        if (full) return this.gate.answerOwn(full);
        let found;
        try {
          // Room in memory is taken as the body is read, chunk by chunk: most bodies are small.
          found = await scanModel(req.body, MODEL_SCAN_BYTES, (n) => {
            if (!this.gate.budget.take(n)) return false;
            buffered += n;
            return true;
          });
        } catch {
          // The upload was cut off: the client has gone, nobody reads an answer.
          this.gate.countAnswer(CLIENT_GONE);
          return new Response(null, { status: CLIENT_GONE });
        }
        if (found.scan === "no room") {
          return this.gate.answerOwn({
            reason: "buffer_full",
            response: openAiError(503, "lychd: the gate holds too many request bodies", 1),
          });
        }
        // A form post may carry anything: it goes to the active engine, as a request without
        // a model does.
        if ("error" in found.scan && isForm(req)) found.scan = { model: null };
        if ("error" in found.scan) {
          return this.gate.answerOwn({
            reason: "bad_request",
            response: openAiError(
              400,
              `lychd: cannot tell which model to serve: ${found.scan.error}`,
            ),
          });
        }
        const model = found.scan.model;
        wants = model === null ? null : this.engineFor(model);
        stream = found.stream;
        forward = new Request(req.url, {
          method: req.method,
          headers: req.headers,
          body: found.body,
          signal: req.signal,
        });
      }
      if (wants !== null) {
        const refused = this.#backingOff(wants);
        if (refused) return this.gate.answerOwn({ reason: "backoff", response: refused });
      }
      this.#lastFor.set(wants ?? this.gate.target() ?? "", this.#now());
      answer = this.gate.handle(forward, { ...at, wants, counted: buffered });
      answer.finally(release).catch(() => {});
      return stream ? await this.#streamWhileWaiting(answer, wants) : await answer;
    } finally {
      if (answer === null) release();
    }
  }

  /**
   * `answer` as it comes if it comes within STREAM_AFTER_MS; else a `200` event stream at once,
   * with a comment line every STREAM_BEAT_MS until `answer` comes, then its events (piped, so a
   * client that reads slowly slows the engine, as without this), or its error as one
   * `data: {"error": ...}` event.
   */
  async #streamWhileWaiting(answer: Promise<Response>, wants: string | null): Promise<Response> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let early: Response | null;
    try {
      early = await Promise.race([
        answer,
        new Promise<null>((r) => {
          timer = setTimeout(() => r(null), this.options.streamAfterMs ?? STREAM_AFTER_MS);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    if (early !== null) return early;
    const enc = new TextEncoder();
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
    const writer = writable.getWriter();
    const t0 = this.#now();
    const say = () =>
      writer.write(enc.encode(
        `: lychd: waiting for ${wants ?? "an engine"} (${
          Math.round((this.#now() - t0) / 1000)
        } s)\n\n`,
      )).catch(() => {});
    say();
    const beat = setInterval(say, this.options.streamBeatMs ?? STREAM_BEAT_MS);
    // The client went away (its side of the stream was cancelled): no more comments.
    writer.closed.catch(() => clearInterval(beat));
    answer.then(async (res) => {
      clearInterval(beat);
      const type = res.headers.get("content-type") ?? "";
      if (res.ok && type.includes("text/event-stream") && res.body) {
        writer.releaseLock();
        // Cancelled by the client, it cancels the engine's body (and so its work) in turn.
        await res.body.pipeTo(writable).catch(() => {});
        return;
      }
      await writer.write(enc.encode(await asEvents(res)));
      await writer.close();
    }).catch((e) => {
      clearInterval(beat);
      writer.abort(e).catch(() => {});
    });
    return new Response(readable, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        // nginx would otherwise buffer the comments, and its client would wait in silence.
        "x-accel-buffering": "no",
      },
    });
  }

  /** A 503 for a request that wants an engine whose swap failed a short while ago, or null. */
  #backingOff(engine: string): Response | null {
    const f = this.#failed.get(engine);
    const now = this.#now();
    if (!f || now >= f.until || engine === this.gate.target()) return null;
    const sec = Math.ceil((f.until - now) / 1000);
    return openAiError(
      503,
      `lychd: the swap to ${engine} failed ${f.count === 1 ? "once" : `${f.count} times`}; ` +
        `lychd tries it again in ${sec} s (see \`lychd status\` and \`lychd logs ${engine}\`)`,
      sec,
    );
  }

  /** Swap to the engine the oldest held request wants, once the active one may be swapped out. */
  schedule(): void {
    if (this.#swapping) return;
    clearTimeout(this.#timer);
    // `lychd swap` holds the gate: it opens it when done, and this is asked again then.
    if (this.gate.closedBySwap()) return;
    // The engine that serves, or the one the gate waits for after a crash: no swap to it.
    const current = this.gate.target();
    const waiting = this.gate.heldFor().filter((h) => h.wants !== null && h.wants !== current);
    if (waiting.length === 0) return;
    const target = waiting[0].wants!;
    const refused = this.#backingOff(target);
    if (refused) {
      this.gate.refuseHeld(
        `the swap to ${target} failed a short while ago; see \`lychd status\``,
        target,
        "backoff",
      );
      this.schedule();
      return;
    }
    const now = this.#now();
    const resident = now - this.#activeSince;
    const inFlight = this.gate.counts().inFlight;
    const quiet = this.quietMs(current, waiting.length);
    // Quiet since its last request came in or its last answer ended, whichever was later.
    const quietFor = now - Math.max(this.#lastFor.get(current ?? "") ?? 0, this.#idleAt);
    // Served at least as long as the swap to it took: then at most half the time is swapping.
    const paidFor = this.#cost.get(current ?? "") ?? 0;
    const idle = current === null || (inFlight === 0 && quietFor >= quiet && resident >= paidFor);
    if (!idle && resident < this.options.minResidencyMs) {
      // Look again when the residency is over, or (nothing in flight) when it may be idle; a
      // request that ends first brings the look forward (onIdle).
      const untilIdle = inFlight > 0 ? Infinity : Math.max(quiet - quietFor, paidFor - resident);
      const wait = Math.min(this.options.minResidencyMs - resident, untilIdle);
      this.#timer = setTimeout(() => this.schedule(), wait);
      return;
    }
    this.#swapping = true;
    this.swaps++;
    this.options.log(
      `on demand: ${current ?? "no engine"} -> ${target} (${waiting.length} requests wait for it)`,
    );
    const t0 = Date.now(); // SwapRecord.at is wall-clock time
    this.options.swap(target).then((ok) => ok, () => false).then((ok) => {
      this.#swapping = false;
      this.#activeSince = this.#now();
      if (ok) {
        this.#failed.delete(target);
        // The swap's own phases, as it reported them to the gate (one that found the engine
        // serving already reports none: it cost nothing to learn from).
        const record = this.gate.lastSwap();
        if (record?.to === target && record.result === "ok" && record.at >= t0) {
          const sec = Object.entries(record.phases).filter(([p]) => p !== "drain")
            .reduce((a, [, s]) => a + s, 0);
          this.#cost.set(target, sec * 1000);
        }
      } else {
        const count = (this.#failed.get(target)?.count ?? 0) + 1;
        const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MS * 2 ** (count - 1));
        this.#failed.set(target, { count, until: this.#now() + backoff });
        this.options.log(
          `on demand: the swap to ${target} failed (${count} in a row); refusing it for ` +
            `${backoff / 1000} s`,
        );
        this.gate.refuseHeld(`the swap to ${target} failed; see \`lychd status\``, target);
      }
      this.schedule();
    });
  }

  /** Every configured model, with its engine and whether that engine serves now. */
  models(): Response {
    const active = this.gate.engine();
    const data = this.engines.map((e) => ({
      id: e.model ?? e.name,
      object: "model",
      created: 0,
      owned_by: "lychd",
      engine: e.name,
      loaded: e.name === active,
    }));
    return new Response(JSON.stringify({ object: "list", data }), {
      headers: { "content-type": "application/json" },
    });
  }
}

/** JSON, no content type, or a form post (`curl -d '{...}'` sends JSON as one). */
function isJson(req: Request): boolean {
  const type = (req.headers.get("content-type") ?? "").toLowerCase();
  return type === "" || type.includes("json") || isForm(req);
}

function isForm(req: Request): boolean {
  return (req.headers.get("content-type") ?? "").toLowerCase().startsWith(
    "application/x-www-form-urlencoded",
  );
}

/** How much of an answer that is not an event stream is read to put it into one. */
const EVENT_BODY_BYTES = 64 << 10;

/**
 * An answer that is not an event stream, for a client that already has its `200` and an event
 * stream: a success as one `data:` event and `[DONE]` (the engine did the work: it is not lost);
 * an error as one `data: {"error": {...}}` event, in the shape OpenAI's clients raise.
 */
async function asEvents(res: Response): Promise<string> {
  const text = await readAtMost(res, EVENT_BODY_BYTES);
  if (res.ok) return `data: ${text.replaceAll("\n", " ")}\n\ndata: [DONE]\n\n`;
  let body: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object") body = parsed;
  } catch { /* not JSON: the text itself is the message */ }
  const inner = body.error;
  const message = typeof inner === "string" && inner ? inner : inner && typeof inner === "object" &&
      typeof (inner as Record<string, unknown>).message === "string"
    ? (inner as Record<string, string>).message
    : typeof body.message === "string"
    ? body.message
    : `the engine answered ${res.status}: ${text.slice(0, 200)}`;
  const error = {
    message,
    type: res.status === 503 ? "service_unavailable" : "server_error",
    param: null,
    code: res.status,
  };
  return `data: ${JSON.stringify({ error })}\n\n`;
}

async function readAtMost(res: Response, limit: number): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  while (n < limit) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    n += value.length;
  }
  await reader.cancel().catch(() => {});
  const all = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all.subarray(0, Math.min(n, limit)));
}
