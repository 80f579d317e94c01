/**
 * The gate's core: a reverse proxy in front of the active engine that holds requests while no
 * engine is ready and drains the old engine before a swap (`lychd gate` serves it on 8081,
 * lib/commands/gate.ts). Every request goes to the upstream as it is, bodies streamed both ways
 * (SSE chunk by chunk), and a client that goes away aborts its upstream request. While closed,
 * requests wait in arrival order, up to a hold timeout and a maximum number held; beyond either,
 * 503 with Retry-After and an OpenAI-shaped error. A request may want one engine (on demand):
 * it waits until the gate opens to that engine.
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
   * again; without it, that request is a 502.
   */
  serving?: (upstream: string) => Promise<{ engine: string | null } | false>;
  /** How often `serving` is asked while the engine is away. */
  probeIntervalMs?: number;
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
  /** Seconds per phase: drain, stop, start, load (those that happened). */
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

/**
 * How often a request that got no answer at all is sent (a completion has no side effect to
 * repeat; a bound keeps an engine that drops every connection from looping it forever).
 */
const MAX_ATTEMPTS = 3;

/** Request bodies up to this size are read before forwarding, so they can be sent again. */
export const REPLAYABLE_BYTES = 1 << 20;

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
export function openAiError(status: number, message: string, retryAfterSec?: number): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (retryAfterSec !== undefined) headers["retry-after"] = String(retryAfterSec);
  const type = status === 503
    ? "service_unavailable"
    : status === 401
    ? "invalid_request_error"
    : "server_error";
  return new Response(
    JSON.stringify({ error: { message, type, param: null, code: status } }),
    { status, headers },
  );
}

interface Waiter {
  /** The engine this request must go to; null = whichever serves. */
  wants: string | null;
  since: number;
  release: (upstream: string) => void;
  refuse: (response: Response) => void;
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

export class Gate {
  #upstream: string | null;
  #engine: string | null = null;
  /** Where requests went before the engine went away; polled until it serves again. */
  #lost: string | null = null;
  #closedTimer: ReturnType<typeof setTimeout> | undefined;
  #held: Waiter[] = [];
  #inFlight = 0;
  #served = 0;
  #refused = 0;
  #idle: (() => void)[] = [];
  #requests = new Map<string, number>();
  #refusals = new Map<string, number>();
  #holdWait = new Histogram(HOLD_BUCKETS);
  #phases = new Map<string, Histogram>();
  #swaps = new Map<string, number>();
  #lastSwap: SwapRecord | null = null;
  #holdTimeoutMs: number;
  /** Called whenever a request starts to wait (on demand decides then whether to swap). */
  onHold: (() => void) | null = null;

  constructor(
    upstream: string | null,
    readonly options: GateOptions,
    readonly fetcher: typeof fetch = fetch,
  ) {
    this.#upstream = upstream;
    this.#holdTimeoutMs = options.holdTimeoutMs;
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

  isOpen(): boolean {
    return this.#upstream !== null;
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
    if (holdTimeoutMs !== undefined) this.#holdTimeoutMs = holdTimeoutMs;
    const back = upstream ?? this.#upstream ?? this.#lost;
    this.#upstream = null;
    this.#lost = null;
    clearTimeout(this.#closedTimer);
    if (back && this.options.serving && holdTimeoutMs !== undefined) {
      this.#closedTimer = setTimeout(() => this.recover(back, this.#engine), holdTimeoutMs);
    }
  }

  /**
   * Send to `upstream` from now on (`engine` names what serves there); the held requests that
   * may go to it go first, in the order they came.
   */
  open(upstream: string, engine: string | null = this.#engine): void {
    clearTimeout(this.#closedTimer);
    this.#lost = null;
    this.#upstream = upstream;
    this.#engine = engine;
    this.#holdTimeoutMs = this.options.holdTimeoutMs;
    const go = this.#held.filter((w) => w.wants === null || w.wants === engine);
    this.#held = this.#held.filter((w) => !go.includes(w));
    for (const w of go) w.release(upstream);
  }

  /**
   * Answer held requests with a 503 now: no engine will serve them (a failed swap). `wants`:
   * only those waiting for that engine.
   */
  refuseHeld(message: string, wants?: string): void {
    const gone = this.#held.filter((w) => wants === undefined || w.wants === wants);
    this.#held = this.#held.filter((w) => !gone.includes(w));
    for (const w of gone) {
      this.#count(this.#refusals, "no_engine");
      w.refuse(openAiError(503, `lychd: ${message}`, 10));
    }
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
    this.#count(this.#swaps, `from="${swap.from ?? ""}",to="${swap.to}",result="${swap.result}"`);
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
   * `completed`: the server's promise that the response was sent (Deno.serve's
   * `info.completed`); with it the engine's body goes to the client untouched (Deno's fast path),
   * without it the body is piped through a stream that notices its end.
   * `wants`: the engine this request must be served by (on demand); null = the active one.
   */
  async handle(
    req: Request,
    completed?: Promise<void>,
    wants: string | null = null,
  ): Promise<Response> {
    // A small body is read first: should the engine turn out to be gone, it can be sent again.
    const length = Number(req.headers.get("content-length") ?? NaN);
    const body: BodyInit | null = req.body === null
      ? null
      : length <= REPLAYABLE_BYTES
      ? await req.arrayBuffer()
      : req.body;
    for (let attempt = 1;; attempt++) {
      const direct = this.#upstream !== null && (wants === null || wants === this.#engine);
      const t0 = performance.now();
      const upstream = direct ? this.#upstream! : await this.#hold(wants);
      if (upstream instanceof Response) {
        this.#refused++;
        this.#count(this.#requests, `engine="",code="${upstream.status}"`);
        return upstream;
      }
      if (!direct) this.#holdWait.observe((performance.now() - t0) / 1000);
      const r = await this.#forward(req, body, upstream, completed, attempt < MAX_ATTEMPTS);
      if (r !== "lost") return r;
      // No answer at all: the engine is gone, or the connection was one kept alive to an engine
      // that has since been swapped out. Hold the request and send it again once one serves.
      this.recover(upstream, this.#engine);
    }
  }

  #hold(wants: string | null): Promise<string | Response> {
    const timeoutMs = this.#holdTimeoutMs;
    const retryAfter = Math.max(1, Math.ceil(timeoutMs / 1000));
    if (this.#held.length >= this.options.maxHeld) {
      this.#count(this.#refusals, "queue_full");
      return Promise.resolve(openAiError(
        503,
        `lychd: ${this.#held.length} requests are already waiting for the engine to be ready`,
        retryAfter,
      ));
    }
    return new Promise((resolve) => {
      const waiter: Waiter = {
        wants,
        since: Date.now(),
        release: (u) => {
          clearTimeout(timer);
          resolve(u);
        },
        refuse: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        this.#held.splice(this.#held.indexOf(waiter), 1);
        this.#count(this.#refusals, "hold_timeout");
        resolve(openAiError(
          503,
          `lychd: no engine was ready within ${timeoutMs / 1000} s`,
          retryAfter,
        ));
      }, timeoutMs);
      this.#held.push(waiter);
      this.onHold?.();
    });
  }

  /** Hold new requests and poll `upstream` until it serves, then open to it again. */
  recover(upstream: string, engine: string | null): void {
    if (this.#lost !== null || !this.options.serving) return;
    this.#upstream = null;
    this.#lost = upstream;
    const poll = async () => {
      if (this.#lost !== upstream) return; // a swap took over
      const found = await this.options.serving!(upstream).catch(() => false as const);
      if (found) {
        if (this.#lost === upstream) this.open(upstream, found.engine ?? engine);
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
    mayRetry: boolean,
  ): Promise<Response | "lost"> {
    const url = new URL(req.url);
    const engine = this.#engine ?? "";
    this.#inFlight++;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      this.#inFlight--;
      this.#served++;
      if (this.#inFlight === 0) { for (const f of this.#idle.splice(0)) f(); }
    };
    let answer: Response;
    try {
      const headers = endToEndHeaders(req.headers);
      // Deno's fetch decodes a gzip or br body it asked for but keeps the engine's
      // content-encoding and content-length, so the client would get a decoded body under a
      // gzip header. Asking for the body as it is keeps bytes and headers together (on loopback
      // compression saves nothing anyway).
      headers.set("accept-encoding", "identity");
      answer = await this.fetcher(`${upstream}${url.pathname}${url.search}`, {
        method: req.method,
        headers,
        body,
        // A client that goes away aborts the engine's work on its request.
        signal: req.signal,
        redirect: "manual",
      });
    } catch (e) {
      done = true;
      this.#inFlight--;
      if (this.#inFlight === 0) { for (const f of this.#idle.splice(0)) f(); }
      if (req.signal.aborted) return new Response(null, { status: 499 });
      const replayable = !(body instanceof ReadableStream);
      if (this.options.serving && replayable && mayRetry) return "lost";
      this.#refused++;
      this.#count(this.#refusals, "engine_error");
      this.#count(this.#requests, `engine="${engine}",code="502"`);
      return openAiError(502, `lychd: the engine did not answer: ${(e as Error).message}`);
    }
    this.#count(this.#requests, `engine="${engine}",code="${answer.status}"`);
    if (!answer.body) {
      finish();
      return new Response(null, {
        status: answer.status,
        headers: endToEndHeaders(answer.headers),
      });
    }
    // In flight until the last byte is relayed (or the client leaves): what drain waits for.
    let out = answer.body;
    if (completed) {
      completed.then(finish, finish);
      // The engine's response as it came, when nothing in it belongs to this hop: Deno.serve
      // then relays it without a rebuilt Response (more requests per second under load,
      // docs/development.md "The gate's core, measured").
      if (!HOP_BY_HOP.some((name) => answer.headers.has(name))) return answer;
    } else {
      out = answer.body.pipeThrough(new TransformStream({ flush: finish }), {
        signal: req.signal,
      });
      req.signal.addEventListener("abort", finish, { once: true });
    }
    return new Response(out, {
      status: answer.status,
      statusText: answer.statusText,
      headers: endToEndHeaders(answer.headers),
    });
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
    family("lychd_gate_requests_held", "gauge", "Requests waiting for an engine now.");
    lines.push(`lychd_gate_requests_held ${this.#held.length}`);
    family("lychd_gate_requests_in_flight", "gauge", "Requests sent to the engine, not done.");
    lines.push(`lychd_gate_requests_in_flight ${this.#inFlight}`);
    family("lychd_gate_open", "gauge", "1 while the gate sends requests to an engine.");
    lines.push(`lychd_gate_open ${this.isOpen() ? 1 : 0}`);
    family(
      "lychd_gate_hold_wait_seconds",
      "histogram",
      "How long held requests waited for an engine.",
    );
    lines.push(...this.#holdWait.lines("lychd_gate_hold_wait_seconds"));
    family("lychd_gate_refused_total", "counter", "Requests the gate failed itself, by reason.");
    for (const reason of ["queue_full", "hold_timeout", "no_engine", "engine_error"]) {
      lines.push(
        `lychd_gate_refused_total{reason="${reason}"} ${this.#refusals.get(reason) ?? 0}`,
      );
    }
    family("lychd_gate_swaps_total", "counter", "Swaps through the gate, by from, to and result.");
    for (const [k, v] of this.#swaps) lines.push(`lychd_gate_swaps_total{${k}} ${v}`);
    family("lychd_gate_swap_phase_seconds", "histogram", "How long each phase of a swap took.");
    for (const [phase, h] of this.#phases) {
      lines.push(...h.lines("lychd_gate_swap_phase_seconds", `phase="${phase}"`));
    }
    return lines.join("\n") + "\n";
  }
}
