/**
 * The gate's core: a reverse proxy in front of the active engine that holds requests while no
 * engine is ready and drains the old engine before a swap (`lychd gate` serves it on 8081,
 * lib/commands/gate.ts). Every request goes to the upstream as it is, bodies streamed both ways
 * (SSE chunk by chunk), and a client that goes away aborts its upstream request. While closed,
 * requests wait in arrival order, up to a hold timeout and a maximum number held; beyond either,
 * 503 with Retry-After and an OpenAI-shaped error. A request may want one engine (on demand):
 * it waits until the gate opens to that engine.
 *
 * What a client sees when something goes wrong is a promise (docs/gate.md, "What a client
 * sees"; tests/gate_outcomes.ts): a request is sent to an engine a second time only when it
 * provably never reached one (the connection was refused, or the engine answered 503 before
 * any byte, as llama.cpp does while it loads), at most once, and only to the same engine. A
 * request cut off once an engine had it is a 502 that says so, never an answer from another
 * engine.
 */

export interface GateOptions {
  /** How long a request may wait for an engine before it gets a 503. */
  holdTimeoutMs: number;
  /** How many requests may wait at once; the next one gets a 503. */
  maxHeld: number;
  /**
   * Whether the upstream serves now, and which engine it is (null: serves, not known which);
   * false: it does not. With it, a request the engine refused to connect (it crashed, or is
   * restarting) is held instead of failed, and the gate polls this until an engine serves
   * again; without it, that request is a 503 at once.
   */
  serving?: (
    upstream: string,
  ) => Promise<{ engine: string | null; upstream?: string } | false>;
  /** How often `serving` is asked while the engine is away. */
  probeIntervalMs?: number;
  /** Bytes of request bodies the gate may hold in memory at once (default MAX_BUFFERED_BYTES). */
  maxBufferedBytes?: number;
}

export interface GateCounts {
  inFlight: number;
  held: number;
  served: number;
  /** Requests the gate answered itself with an error (held too long, too many held, no engine). */
  refused: number;
}

/** What the gate knows of a swap, as `lychd swap` reports it when it opens the gate. */
export interface SwapRecord {
  from: string | null;
  to: string;
  /** ok: `to` serves; rolled-back: `to` failed and `from` serves again; failed: nothing serves. */
  result: "ok" | "rolled-back" | "failed";
  /** Seconds per phase: drain, sleep, stop, wake, start, load, warmup (those that happened). */
  phases: Record<string, number>;
  /** When it ended (ms since the epoch). */
  at: number;
}

/** Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1). */
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

/** Request bodies up to this size are read before forwarding, so they can be sent again. */
export const REPLAYABLE_BYTES = 1 << 20;

/** Request bodies held in memory at once, in all (read for a resend, or for on demand's model). */
export const MAX_BUFFERED_BYTES = 256 << 20;

/** Retry-After when no swap has been timed yet (seconds; a small model's swap). */
const DEFAULT_SWAP_SEC = 10;

/** Why the gate answered a request itself (lychd_gate_refused_total's reason label). */
export const REFUSAL_REASONS = [
  "queue_full",
  "hold_timeout",
  "no_engine",
  "engine_error",
  "engine_lost",
  "stopped",
  "shutting_down",
  "buffer_full",
  "backoff",
  "bad_request",
] as const;
export type RefusalReason = typeof REFUSAL_REASONS[number];

export function endToEndHeaders(headers: Headers): Headers {
  const out = new Headers(headers);
  // Connection may name more headers that are this hop's only.
  for (const name of (headers.get("connection") ?? "").split(",")) {
    if (name.trim()) out.delete(name.trim());
  }
  for (const name of HOP_BY_HOP) out.delete(name);
  out.delete("host");
  return out;
}

/** An error the way OpenAI's API (and so every client library) expects one. */
/**
 * Routes that control an engine rather than ask it something: vLLM's development-mode routes
 * (on for an engine that sleeps: docs/warm-swaps.md) and SGLang's memory release. A client that
 * put the awake engine to sleep would leave the gate sending requests into a hang (vllm #45268).
 */
const ENGINE_CONTROL = new Set([
  "/sleep",
  "/wake_up",
  "/is_sleeping",
  "/collective_rpc",
  "/reset_prefix_cache",
  "/reset_mm_cache",
  "/server_info",
  "/scale_elastic_ep",
  "/is_scaling_elastic_ep",
  "/release_memory_occupation",
  "/resume_memory_occupation",
]);

/** As the engine's server would route it: percent-decoded, slashes collapsed, none at the end. */
export function isEngineControl(pathname: string): boolean {
  let path = pathname;
  try {
    path = decodeURIComponent(pathname);
  } catch { /* malformed: matched as it is */ }
  path = path.replace(/\/+/g, "/").replace(/\/$/, "");
  return ENGINE_CONTROL.has(path);
}

export function openAiError(status: number, message: string, retryAfterSec?: number): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (retryAfterSec !== undefined) headers["retry-after"] = String(retryAfterSec);
  const type = status === 503
    ? "service_unavailable"
    : status === 401 || status === 400 || status === 403
    ? "invalid_request_error"
    : "server_error";
  return new Response(
    JSON.stringify({ error: { message, type, param: null, code: status } }),
    { status, headers },
  );
}

/** How a request is to be forwarded. */
export interface Forwarding {
  /**
   * The server's promise that the response was sent (Deno.serve's `info.completed`); with it the
   * engine's body goes to the client untouched (Deno's fast path), without it the body is piped
   * through a stream that notices its end.
   */
  completed?: Promise<void>;
  /** The engine this request must be served by (on demand); null: whichever serves. */
  wants?: string | null;
  /** The client's address, for X-Forwarded-For. */
  client?: string;
  /** Bytes of its body that the caller read and counted in `budget` already (on demand). */
  counted?: number;
}

/**
 * The HTTP client for one opening of the gate: a new connection for every request, none kept
 * alive. llama.cpp's server closes a kept-alive connection after a few requests (its
 * `Keep-Alive: max=`) or when idle; a request written into one just as it closes ends in
 * "connection closed before message completed", and then nobody can know whether the engine ran
 * it (measured with the real server, 16 clients: 7-9 of about 3,800 requests failed so with
 * connections kept alive, 0 of 3,932 without; tests/gate_llama_test.ts). A loopback connection
 * costs far less than such a failure.
 */
function engineClient(): Deno.HttpClient {
  return Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
}

/** The gate's answer for a client that has gone away (nobody reads it; nginx's code for it). */
export const CLIENT_GONE = 499;

/** A request the gate answers itself, with the reason its metrics count it under. */
export interface Refusal {
  reason: RefusalReason;
  response: Response;
}

interface Waiter {
  /** The engine this request must go to; null = whichever serves. */
  wants: string | null;
  since: number;
  release: (upstream: string) => void;
  refuse: (refusal: Refusal | "gone") => void;
}

/** Seconds; the hold-wait histogram's buckets (a swap takes from a second to ten minutes). */
const HOLD_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const PHASE_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

class Histogram {
  counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly buckets: number[]) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number) {
    this.sum += v;
    this.count++;
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i]++;
    });
  }
  lines(name: string, labels = ""): string[] {
    const sep = labels ? `${labels},` : "";
    return [
      ...this.buckets.map((b, i) => `${name}_bucket{${sep}le="${b}"} ${this.counts[i]}`),
      `${name}_bucket{${sep}le="+Inf"} ${this.count}`,
      `${name}_sum${labels ? `{${labels}}` : ""} ${this.sum}`,
      `${name}_count${labels ? `{${labels}}` : ""} ${this.count}`,
    ];
  }
}

/** Bytes of request bodies in memory, bounded in all. */
export class ByteBudget {
  #used = 0;
  constructor(readonly limit: number) {}
  take(n: number): boolean {
    if (this.#used + n > this.limit) return false;
    this.#used += n;
    return true;
  }
  give(n: number): void {
    this.#used = Math.max(0, this.#used - n);
  }
  used(): number {
    return this.#used;
  }
}

/** How one attempt to forward a request ended, when it did not end in an answer for the client. */
type Attempt =
  | Response
  /** It provably never reached an engine: the connection was refused, or the engine said 503. */
  | { away: string };

/**
 * fetch's error for a connection that was never made (nothing was sent), as Deno words it:
 * "client error (Connect): tcp connect error: Connection refused".
 */
function neverConnected(e: unknown): boolean {
  const cause = (e as { cause?: unknown })?.cause;
  const text = `${(e as Error)?.message ?? ""} ${(cause as Error)?.message ?? ""}`;
  return /client error \(Connect\)/.test(text);
}

export class Gate {
  #upstream: string | null;
  #engine: string | null = null;
  /** Where requests went before the engine went away; polled until it serves again. */
  #lost: string | null = null;
  #lostEngine: string | null = null;
  /** Why no engine serves after an explicit stop (null: not stopped). */
  #stopped: string | null = null;
  #shuttingDown = false;
  #closedAt = 0;
  #closedTimer: ReturnType<typeof setTimeout> | undefined;
  #held: Waiter[] = [];
  #inFlight = 0;
  /** The upstream requests now in flight, so that a swap can cut them off. */
  #cuttable = new Set<AbortController>();
  #served = 0;
  #refused = 0;
  #idle: (() => void)[] = [];
  #requests = new Map<string, number>();
  #refusals = new Map<string, number>();
  /** How long held requests waited, by the engine they wanted ("" = any engine). */
  #holdWait = new Map<string, Histogram>([["", new Histogram(HOLD_BUCKETS)]]);
  #phases = new Map<string, Histogram>();
  #swaps = new Map<string, number>();
  #lastSwap: SwapRecord | null = null;
  #holdTimeoutMs: number;
  /**
   * One HTTP client per engine the gate opens to: a connection kept alive to an engine that has
   * since been swapped out (or crashed) is never used again, so a request cannot be written into
   * a dead engine's socket (and then not be known to be safe to send again).
   */
  #client: Deno.HttpClient | null = null;
  /** Counts the gate's openings: a request let through to one opening is not sent to another. */
  #generation = 0;
  /** Counts recover() calls: an older poll loop stops when a newer one starts. */
  #recovering = 0;
  /** The gate was closed by a swap (close()), which will open it; on demand waits for it. */
  #closedBySwap = false;
  /** Counts what the gate was told (close, open, recover, stop): who acted since a look. */
  #changes = 0;
  readonly budget: ByteBudget;
  /** Called whenever a request starts to wait (on demand decides then whether to swap). */
  onHold: (() => void) | null = null;
  /** Called whenever the last request in flight has ended (on demand: the engine is idle). */
  onIdle: (() => void) | null = null;

  constructor(upstream: string | null, readonly options: GateOptions) {
    this.#upstream = upstream;
    this.#holdTimeoutMs = options.holdTimeoutMs;
    this.budget = new ByteBudget(options.maxBufferedBytes ?? MAX_BUFFERED_BYTES);
    if (upstream !== null) this.#client = engineClient();
  }

  /** Let go of the connections to the engine (tests; the gate process just exits). */
  dispose(): void {
    this.#client?.close();
    this.#client = null;
  }

  counts(): GateCounts {
    return {
      inFlight: this.#inFlight,
      held: this.#held.length,
      served: this.#served,
      refused: this.#refused,
    };
  }

  /** The engine the gate sends to now (null: closed, or not told). */
  engine(): string | null {
    return this.#upstream === null ? null : this.#engine;
  }

  /**
   * The engine that serves or is about to serve again: the one the gate is open to, or the one
   * it waits for after it went away (a crash, a restart). null: none (closed, or stopped).
   */
  target(): string | null {
    if (this.#upstream !== null) return this.#engine;
    return this.#lost !== null ? this.#lostEngine : null;
  }

  isOpen(): boolean {
    return this.#upstream !== null;
  }

  /** Goes up whenever the gate is closed, opened, sent to recover or stopped. */
  changes(): number {
    return this.#changes;
  }

  /** SIGTERM came: the gate answers 503 and is about to exit. */
  isShuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** A swap closed the gate and will open it (on demand starts no swap of its own then). */
  closedBySwap(): boolean {
    return this.#closedBySwap && this.#upstream === null && this.#lost === null;
  }

  /** Why nothing serves after `lychd stop` (null: not stopped). */
  stopped(): string | null {
    return this.#stopped;
  }

  lastSwap(): SwapRecord | null {
    return this.#lastSwap;
  }

  /**
   * Stop sending new requests upstream; they wait until open(). Requests in flight go on.
   * `holdTimeoutMs` replaces the hold timeout (a swap: the new engine's start timeout); should
   * nobody open the gate within it (the swap died), the gate goes back to `upstream` as soon as
   * it serves.
   */
  close(holdTimeoutMs?: number, upstream?: string): void {
    this.#changes++;
    if (holdTimeoutMs !== undefined) this.#holdTimeoutMs = holdTimeoutMs;
    const back = upstream ?? this.#upstream ?? this.#lost;
    const engine = this.target();
    this.#upstream = null;
    this.#lost = null;
    this.#stopped = null;
    this.#closedBySwap = true;
    this.#closedAt = Date.now();
    clearTimeout(this.#closedTimer);
    if (back && this.options.serving && holdTimeoutMs !== undefined) {
      this.#closedTimer = setTimeout(() => this.recover(back, engine), holdTimeoutMs);
    }
  }

  /**
   * Send to `upstream` from now on (`engine` names what serves there); the held requests that
   * may go to it go first, in the order they came. A held request that must go to another
   * engine (it was refused by that one) is answered at once when nothing will bring that engine
   * back (no on demand).
   */
  open(upstream: string, engine: string | null = this.#engine): void {
    this.#changes++;
    clearTimeout(this.#closedTimer);
    this.#lost = null;
    this.#stopped = null;
    this.#client?.close();
    this.#client = engineClient();
    this.#generation++;
    this.#closedBySwap = false;
    this.#upstream = upstream;
    this.#engine = engine;
    this.#holdTimeoutMs = this.options.holdTimeoutMs;
    const go = this.#held.filter((w) => w.wants === null || w.wants === engine);
    const orphans = this.onHold === null ? this.#held.filter((w) => !go.includes(w)) : [];
    this.#held = this.#held.filter((w) => !go.includes(w) && !orphans.includes(w));
    for (const w of go) w.release(upstream);
    // What is still held wants another engine: on demand decides now whether to swap to it.
    if (this.#held.length > 0) queueMicrotask(() => this.onHold?.());
    for (const w of orphans) {
      w.refuse(this.#refusal(
        "engine_lost",
        503,
        `lychd: ${w.wants} no longer serves (${engine ?? "another engine"} does now); your ` +
          `request never reached it and was not run: send it again`,
        1,
      ));
    }
  }

  /**
   * Answer held requests with a 503 now: no engine will serve them (a failed swap). `wants`:
   * only those waiting for that engine.
   */
  refuseHeld(message: string, wants?: string, reason: RefusalReason = "no_engine"): void {
    const gone = this.#held.filter((w) => wants === undefined || w.wants === wants);
    this.#held = this.#held.filter((w) => !gone.includes(w));
    for (const w of gone) {
      w.refuse(this.#refusal(reason, 503, `lychd: ${message}`, this.#retryAfterSec()));
    }
  }

  /**
   * Nothing serves until a swap (`lychd stop`): every request, held or new, is answered at once
   * with a 503 that says so. On demand still swaps for a request that names a model.
   */
  stop(message: string): void {
    this.#changes++;
    clearTimeout(this.#closedTimer);
    this.#upstream = null;
    this.#lost = null;
    this.#closedBySwap = false;
    this.#stopped = message;
    const gone = this.onHold === null ? this.#held : this.#held.filter((w) => w.wants === null);
    this.#held = this.#held.filter((w) => !gone.includes(w));
    for (const w of gone) w.refuse(this.#refusal("stopped", 503, `lychd: ${message}`));
  }

  /**
   * The gate is about to exit (SIGTERM): held requests get a 503 at once, with a Retry-After
   * for the restart; so do requests that arrive from now on. Requests in flight go on.
   */
  shutdown(): void {
    this.#shuttingDown = true;
    // Nothing left to wait for: no timer or probe loop keeps the process from exiting.
    clearTimeout(this.#closedTimer);
    this.#recovering++;
    this.#lost = null;
    const gone = this.#held.splice(0);
    for (const w of gone) {
      w.refuse(this.#refusal("shutting_down", 503, "lychd: the gate is restarting", 2));
    }
  }

  /**
   * Abort every upstream request still in flight (a swap after its drain timeout): the old
   * engine gets no client connection that keeps it from exiting, and each of those clients a
   * 502 that says its request was cut off (or, mid-stream, the end of its stream).
   */
  cut(): number {
    const n = this.#cuttable.size;
    for (const c of this.#cuttable) c.abort("cut");
    return n;
  }

  /** Held requests by the engine they want ("" = any), oldest first. */
  heldFor(): { wants: string | null; since: number }[] {
    return this.#held.map((w) => ({ wants: w.wants, since: w.since }));
  }

  /** Swaps recorded since the gate started. */
  swapCount(): number {
    return [...this.#swaps.values()].reduce((a, b) => a + b, 0);
  }

  recordSwap(swap: SwapRecord): void {
    this.#lastSwap = swap;
    // Warm: the new engine was woken from sleep, not started (docs/warm-swaps.md).
    const kind = "wake" in swap.phases ? "warm" : "cold";
    this.#count(
      this.#swaps,
      `from="${swap.from ?? ""}",to="${swap.to}",result="${swap.result}",kind="${kind}"`,
    );
    for (const [phase, sec] of Object.entries(swap.phases)) {
      if (!this.#phases.has(phase)) this.#phases.set(phase, new Histogram(PHASE_BUCKETS));
      this.#phases.get(phase)!.observe(sec);
    }
  }

  /** Close, then wait until no request is in flight (or `timeoutMs`). */
  async drain(timeoutMs: number): Promise<{ drained: boolean; inFlight: number }> {
    if (this.isOpen()) this.close();
    return await this.settled(timeoutMs);
  }

  /** Wait until no request is in flight (or `timeoutMs`), without closing. */
  async settled(timeoutMs: number): Promise<{ drained: boolean; inFlight: number }> {
    if (this.#inFlight === 0) return { drained: true, inFlight: 0 };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const drained = await Promise.race([
      new Promise<boolean>((r) => this.#idle.push(() => r(true))),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), timeoutMs)),
    ]);
    clearTimeout(timer);
    return { drained, inFlight: this.#inFlight };
  }

  /**
   * A request the gate answers itself, before any engine saw it (an API key missing, a body it
   * cannot read): counted like every other answer.
   */
  answerOwn(refusal: Refusal): Response {
    this.#refused++;
    this.#count(this.#refusals, refusal.reason);
    this.#count(this.#requests, `engine="",code="${refusal.response.status}"`);
    return refusal.response;
  }

  /** Count an answer that is no refusal of the gate's (a 401 from the key check, say). */
  countAnswer(status: number): void {
    this.#count(this.#requests, `engine="",code="${status}"`);
  }

  /** Whether a request that must wait now would find room (on demand asks before it reads). */
  queueFull(): Refusal | null {
    if (this.#held.length < this.options.maxHeld) return null;
    return this.#refusal(
      "queue_full",
      503,
      `lychd: ${this.#held.length} requests are already waiting for the engine to be ready`,
      this.#retryAfterSec(),
    );
  }

  /**
   * Forward one request (see `Forwarding`), holding it while no engine it may go to serves.
   */
  async handle(req: Request, at: Forwarding = {}): Promise<Response> {
    const { completed, client } = at;
    let wants = at.wants ?? null;
    if (isEngineControl(new URL(req.url).pathname)) {
      return this.answerOwn(this.#refusal(
        "bad_request",
        403,
        "lychd: the engines' control routes (sleep, wake, collective_rpc, ...) are not served on " +
          "8081: lychd alone puts engines to sleep and wakes them",
      ));
    }
    if (req.headers.get("upgrade")) {
      return this.answerOwn(this.#refusal(
        "bad_request",
        501,
        `lychd: the gate does not forward protocol upgrades (${
          req.headers.get("upgrade")
        }); use plain HTTP requests`,
      ));
    }
    let body: BodyInit | null | undefined;
    let buffered = 0;
    let resent = false;
    try {
      for (;;) {
        const own = this.#refuseNow(wants);
        if (own) return this.answerOwn(own);
        let upstream: string;
        if (this.#upstream !== null && (wants === null || wants === this.#engine)) {
          upstream = this.#upstream;
        } else {
          const held = await this.#hold(wants, req.signal);
          if (held === "gone") return this.#clientGone();
          if (typeof held !== "string") return this.answerOwn(held);
          upstream = held;
        }
        if (body === undefined) {
          // Read only now, once an engine takes it: a held request costs no body in memory.
          // Bytes on demand has read already are counted by it.
          const length = Number(req.headers.get("content-length") ?? NaN);
          const room = Math.max(0, length - (at.counted ?? 0));
          if (req.body !== null && length <= REPLAYABLE_BYTES && this.budget.take(room)) {
            buffered = room;
            const generation = this.#generation;
            try {
              body = await req.arrayBuffer();
            } catch {
              return this.#clientGone(); // the upload was cut off: nobody to answer
            }
            // While the body came in, the request was neither held nor in flight: a drain did
            // not wait for it, and a swap may have taken the engine away. Decide again.
            if (this.#generation !== generation || this.#upstream === null) continue;
          } else body = req.body;
        }
        const replayable = !(body instanceof ReadableStream);
        const engine = this.#engine;
        const r = await this.#forward(
          req,
          body,
          upstream,
          completed,
          !resent && replayable,
          client,
        );
        if (r instanceof Response) return r;
        // It never reached an engine: hold it, and send it once more, to the same engine only.
        resent = true;
        if (engine !== null) wants = engine;
        // Open to it until now: find out when it serves again. Closed: a swap is under way and
        // opens the gate itself.
        if (this.#upstream !== null) this.recover(upstream, engine);
      }
    } finally {
      this.budget.give(buffered);
    }
  }

  /** A 503 for a request that may not wait at all (stopped, shutting down), or null. */
  #refuseNow(wants: string | null): Refusal | null {
    if (this.#shuttingDown) {
      return this.#refusal("shutting_down", 503, "lychd: the gate is restarting", 2);
    }
    // On demand starts an engine for a request that names one, stopped or not.
    if (this.#stopped !== null && (wants === null || this.onHold === null)) {
      return this.#refusal("stopped", 503, `lychd: ${this.#stopped}`);
    }
    return null;
  }

  #refusal(
    reason: RefusalReason,
    status: number,
    message: string,
    retryAfterSec?: number,
  ): Refusal {
    return { reason, response: openAiError(status, message, retryAfterSec) };
  }

  #clientGone(): Response {
    this.#count(this.#requests, `engine="",code="${CLIENT_GONE}"`);
    return new Response(null, { status: CLIENT_GONE });
  }

  /**
   * Seconds until an engine is likely to serve: what the last swap took (its phases), less the
   * time the gate has been closed; never more than the hold itself.
   */
  #retryAfterSec(): number {
    const swapSec = this.#lastSwap
      ? Object.values(this.#lastSwap.phases).reduce((a, b) => a + b, 0)
      : DEFAULT_SWAP_SEC;
    const closedSec = this.#upstream === null && this.#closedAt
      ? (Date.now() - this.#closedAt) / 1000
      : 0;
    const left = Math.max(1, Math.ceil(swapSec - closedSec));
    return Math.min(left, Math.max(1, Math.ceil(this.#holdTimeoutMs / 1000)));
  }

  #hold(wants: string | null, signal: AbortSignal): Promise<string | Refusal | "gone"> {
    const full = this.queueFull();
    if (full) return Promise.resolve(full);
    const timeoutMs = this.#holdTimeoutMs;
    const t0 = performance.now();
    const waits = this.#holdWait.get(wants ?? "") ?? new Histogram(HOLD_BUCKETS);
    this.#holdWait.set(wants ?? "", waits);
    return new Promise((resolve) => {
      const done = (result: string | Refusal | "gone") => {
        clearTimeout(timer);
        signal.removeEventListener("abort", gone);
        waits.observe((performance.now() - t0) / 1000);
        resolve(result);
      };
      const waiter: Waiter = { wants, since: Date.now(), release: done, refuse: done };
      const leave = () => {
        const i = this.#held.indexOf(waiter);
        if (i >= 0) this.#held.splice(i, 1);
      };
      // A client that gave up leaves the queue at once: it holds no place, and on demand no
      // longer counts it.
      const gone = () => {
        leave();
        done("gone");
      };
      const timer = setTimeout(() => {
        leave();
        done(this.#refusal(
          "hold_timeout",
          503,
          `lychd: no engine was ready within ${timeoutMs / 1000} s`,
          this.#retryAfterSec(),
        ));
      }, timeoutMs);
      if (signal.aborted) return gone();
      signal.addEventListener("abort", gone, { once: true });
      this.#held.push(waiter);
      this.onHold?.();
    });
  }

  /** Hold new requests and poll `upstream` until it serves, then open to it again. */
  recover(upstream: string, engine: string | null): void {
    if (this.#lost !== null || !this.options.serving || this.#shuttingDown) return;
    this.#changes++;
    this.#upstream = null;
    this.#stopped = null;
    this.#closedBySwap = false;
    this.#lost = upstream;
    this.#lostEngine = engine;
    this.#closedAt = Date.now();
    const epoch = ++this.#recovering;
    const poll = async () => {
      if (this.#lost !== upstream || epoch !== this.#recovering) return; // taken over
      const found = await this.options.serving!(upstream).catch(() => false as const);
      // Taken over while it probed (a swap opened, a newer recovery): its answer is stale.
      if (this.#lost !== upstream || epoch !== this.#recovering) return;
      if (found) {
        // The engine that serves may answer elsewhere (one that sleeps has a port of its own).
        this.open(found.upstream ?? upstream, found.engine ?? engine);
        return;
      }
      setTimeout(poll, this.options.probeIntervalMs ?? 250);
    };
    poll();
  }

  async #forward(
    req: Request,
    body: BodyInit | null,
    upstream: string,
    completed: Promise<void> | undefined,
    mayResend: boolean,
    client: string | undefined,
  ): Promise<Attempt> {
    const url = new URL(req.url);
    const engine = this.#engine ?? "";
    const cut = new AbortController();
    this.#inFlight++;
    this.#cuttable.add(cut);
    let done = false;
    const finish = (served = true) => {
      if (done) return;
      done = true;
      this.#cuttable.delete(cut);
      this.#inFlight--;
      if (served) this.#served++;
      if (this.#inFlight === 0) {
        for (const f of this.#idle.splice(0)) f();
        if (this.onIdle) queueMicrotask(this.onIdle);
      }
    };
    // Cheaper than AbortSignal.any (16 us a request, measured), which the gate pays per request.
    req.signal.addEventListener("abort", () => cut.abort("client"), { once: true });
    let answer: Response;
    try {
      const headers = endToEndHeaders(req.headers);
      // Deno's fetch decodes a gzip or br body it asked for but keeps the engine's
      // content-encoding and content-length, so the client would get a decoded body under a
      // gzip header. Asking for the body as it is keeps bytes and headers together (on loopback
      // compression saves nothing anyway).
      headers.set("accept-encoding", "identity");
      forwardedHeaders(headers, req, url, client);
      answer = await fetch(`${upstream}${url.pathname}${url.search}`, {
        method: req.method,
        headers,
        body,
        // A client that goes away aborts the engine's work on its request (the listener below);
        // so does a swap that cuts the requests it could not drain.
        signal: cut.signal,
        redirect: "manual",
        ...(this.#client ? { client: this.#client } : {}),
      });
    } catch (e) {
      finish(false);
      if (req.signal.aborted) return this.#clientGone();
      if (cut.signal.aborted) {
        return this.#engineError(
          engine,
          502,
          `lychd: the engine went away mid-request: ${engine || "it"} was stopped by a swap ` +
            "after the drain timeout; your request may have been partly run and was not sent " +
            "again",
        );
      }
      if (neverConnected(e)) {
        if (this.options.serving && mayResend) return { away: "refused" };
        return this.#engineError(
          engine,
          503,
          `lychd: the engine${engine ? ` ${engine}` : ""} refused the connection; your request ` +
            "was not run",
          this.#retryAfterSec(),
        );
      }
      // The engine may be gone (crashed, killed): hold the next requests until it is probed
      // serving again, rather than send them after it. (Behind rootless Podman's port
      // forwarder a dead engine's port still accepts, so nothing would ever be refused.)
      // A streamed upload may have failed on the client's side instead: no conclusion then.
      if (this.#upstream === upstream && !(body instanceof ReadableStream)) {
        this.recover(upstream, engine || null);
      }
      const cause = (e as { cause?: Error }).cause?.message ?? (e as Error).message;
      return this.#engineError(
        engine,
        502,
        `lychd: the engine went away mid-request (${
          cause.replace(/^.*client error/, "client error")
        }); ` +
          "it may have run part of it, so lychd did not send it again",
      );
    }
    if (answer.status === 503 && mayResend && this.options.serving) {
      // The engine is there but not ready (llama.cpp: "Loading model"): it did not run the
      // request. Hold it until the engine serves, as for a refused connection.
      await answer.body?.cancel().catch(() => {});
      finish(false);
      return { away: "503" };
    }
    this.#count(this.#requests, `engine="${engine}",code="${answer.status}"`);
    const location = answer.headers.get("location");
    const relocated = location !== null && location.startsWith(upstream);
    if (!answer.body) {
      finish();
      return new Response(null, {
        status: answer.status,
        headers: clientHeaders(
          answer.headers,
          relocated ? url.origin + location!.slice(upstream.length) : null,
        ),
      });
    }
    // In flight until the last byte is relayed (or the client leaves): what drain waits for.
    let out: ReadableStream<Uint8Array> = answer.body;
    if (completed) {
      completed.then(() => finish(), () => finish());
      // The engine's response as it came, when nothing in it belongs to this hop: Deno.serve
      // then relays it without a rebuilt Response (more requests per second under load,
      // docs/development.md "The gate's core, measured").
      if (!relocated && !HOP_BY_HOP.some((name) => answer.headers.has(name))) return answer;
    } else {
      // Done when the body ends, breaks off (an engine gone mid-stream, a cut) or is cancelled.
      const reader = answer.body.getReader();
      out = new ReadableStream<Uint8Array>({
        async pull(c) {
          try {
            const { value, done } = await reader.read();
            if (done) {
              finish();
              c.close();
            } else c.enqueue(value);
          } catch (e) {
            finish();
            c.error(e);
          }
        },
        cancel(reason) {
          finish();
          return reader.cancel(reason);
        },
      });
      req.signal.addEventListener("abort", () => finish(), { once: true });
    }
    return new Response(out, {
      status: answer.status,
      statusText: answer.statusText,
      headers: clientHeaders(
        answer.headers,
        relocated ? url.origin + location!.slice(upstream.length) : null,
      ),
    });
  }

  #engineError(engine: string, status: number, message: string, retryAfter?: number): Response {
    this.#refused++;
    this.#count(this.#refusals, status === 503 ? "engine_lost" : "engine_error");
    this.#count(this.#requests, `engine="${engine}",code="${status}"`);
    return openAiError(status, message, retryAfter);
  }

  #count(map: Map<string, number>, key: string) {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** The gate's Prometheus metrics (text exposition format 0.0.4). */
  metrics(): string {
    const lines: string[] = [];
    const family = (name: string, type: string, help: string) =>
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    family("lychd_gate_requests_total", "counter", "Requests answered, by engine and HTTP status.");
    for (const [k, v] of this.#requests) lines.push(`lychd_gate_requests_total{${k}} ${v}`);
    family(
      "lychd_gate_requests_held",
      "gauge",
      'Requests waiting now, by the engine they wait for (on demand; "" = any engine).',
    );
    // Every engine ever waited for keeps its series (at 0 when none waits): no gaps in a graph.
    for (const engine of this.#holdWait.keys()) {
      const n = this.#held.filter((w) => (w.wants ?? "") === engine).length;
      lines.push(`lychd_gate_requests_held{engine="${engine}"} ${n}`);
    }
    family("lychd_gate_requests_in_flight", "gauge", "Requests sent to the engine, not done.");
    lines.push(`lychd_gate_requests_in_flight ${this.#inFlight}`);
    family("lychd_gate_open", "gauge", "1 while the gate sends requests to an engine.");
    lines.push(`lychd_gate_open ${this.isOpen() ? 1 : 0}`);
    family(
      "lychd_gate_hold_wait_seconds",
      "histogram",
      "How long held requests waited, until sent, refused, timed out or given up, by the " +
        'engine they waited for ("" = any engine).',
    );
    for (const [engine, h] of this.#holdWait) {
      lines.push(...h.lines("lychd_gate_hold_wait_seconds", `engine="${engine}"`));
    }
    family("lychd_gate_refused_total", "counter", "Requests the gate failed itself, by reason.");
    for (const reason of REFUSAL_REASONS) {
      lines.push(
        `lychd_gate_refused_total{reason="${reason}"} ${this.#refusals.get(reason) ?? 0}`,
      );
    }
    family(
      "lychd_gate_swaps_total",
      "counter",
      "Swaps through the gate, by from, to, result and kind (warm: woken from sleep).",
    );
    for (const [k, v] of this.#swaps) lines.push(`lychd_gate_swaps_total{${k}} ${v}`);
    family("lychd_gate_swap_phase_seconds", "histogram", "How long each phase of a swap took.");
    for (const [phase, h] of this.#phases) {
      lines.push(...h.lines("lychd_gate_swap_phase_seconds", `phase="${phase}"`));
    }
    return lines.join("\n") + "\n";
  }
}

/**
 * X-Forwarded-For/-Proto/-Host, as a proxy in front of a web server sends them: the engine (and
 * its logs) see who asked and under which name, and can build links that work from outside.
 */
function forwardedHeaders(headers: Headers, req: Request, url: URL, client?: string): void {
  if (client !== undefined) {
    const before = req.headers.get("x-forwarded-for");
    headers.set("x-forwarded-for", before ? `${before}, ${client}` : client);
  }
  headers.set("x-forwarded-proto", url.protocol.replace(":", ""));
  const host = req.headers.get("host");
  if (host) headers.set("x-forwarded-host", host);
}

/** The engine's headers for the client; a redirect to the engine's own address points at 8081. */
function clientHeaders(headers: Headers, location: string | null): Headers {
  const out = endToEndHeaders(headers);
  if (location !== null) out.set("location", location);
  return out;
}
