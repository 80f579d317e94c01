/**
 * The gate's core (issue 12, not wired into the units yet): a reverse proxy in front of the
 * active engine that can hold requests while no engine is ready and drain the old engine before a
 * swap. Every request goes to the upstream as it is, bodies streamed both ways (SSE chunk by
 * chunk), and a client that goes away aborts its upstream request. While closed, requests wait in
 * arrival order, up to a hold timeout and a maximum number held; beyond either, 503 with
 * Retry-After and an OpenAI-shaped error.
 */

export interface GateOptions {
  /** How long a request may wait for an engine before it gets a 503. */
  holdTimeoutMs: number;
  /** How many requests may wait at once; the next one gets a 503. */
  maxHeld: number;
}

export interface GateCounts {
  inFlight: number;
  held: number;
  served: number;
  /** Requests the gate answered itself with an error (held too long, too many held, no engine). */
  refused: number;
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
  return new Response(
    JSON.stringify({
      error: {
        message,
        type: status === 503 ? "service_unavailable" : "server_error",
        param: null,
        code: status,
      },
    }),
    { status, headers },
  );
}

interface Waiter {
  release: (upstream: string) => void;
  refuse: (response: Response) => void;
}

export class Gate {
  #upstream: string | null;
  #held: Waiter[] = [];
  #inFlight = 0;
  #served = 0;
  #refused = 0;
  #idle: (() => void)[] = [];

  constructor(
    upstream: string | null,
    readonly options: GateOptions,
    readonly fetcher: typeof fetch = fetch,
  ) {
    this.#upstream = upstream;
  }

  counts(): GateCounts {
    return {
      inFlight: this.#inFlight,
      held: this.#held.length,
      served: this.#served,
      refused: this.#refused,
    };
  }

  /** Stop sending new requests upstream; they wait until open(). Requests in flight go on. */
  close(): void {
    this.#upstream = null;
  }

  /** Send to `upstream` from now on; the held requests go first, in the order they came. */
  open(upstream: string): void {
    this.#upstream = upstream;
    for (const w of this.#held.splice(0)) w.release(upstream);
  }

  /** Close, then wait until no request is in flight (or `timeoutMs`). */
  async drain(timeoutMs: number): Promise<{ drained: boolean; inFlight: number }> {
    this.close();
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
   */
  async handle(req: Request, completed?: Promise<void>): Promise<Response> {
    const upstream = this.#upstream ?? await this.#hold();
    if (upstream instanceof Response) {
      this.#refused++;
      return upstream;
    }
    return await this.#forward(req, upstream, completed);
  }

  #hold(): Promise<string | Response> {
    const retryAfter = Math.max(1, Math.ceil(this.options.holdTimeoutMs / 1000));
    if (this.#held.length >= this.options.maxHeld) {
      return Promise.resolve(openAiError(
        503,
        `lychd: ${this.#held.length} requests are already waiting for the engine to be ready`,
        retryAfter,
      ));
    }
    return new Promise((resolve) => {
      const waiter: Waiter = {
        release: (u) => {
          clearTimeout(timer);
          resolve(u);
        },
        refuse: resolve,
      };
      const timer = setTimeout(() => {
        this.#held.splice(this.#held.indexOf(waiter), 1);
        waiter.refuse(openAiError(
          503,
          `lychd: no engine was ready within ${this.options.holdTimeoutMs / 1000} s`,
          retryAfter,
        ));
      }, this.options.holdTimeoutMs);
      this.#held.push(waiter);
    });
  }

  async #forward(req: Request, upstream: string, completed?: Promise<void>): Promise<Response> {
    const url = new URL(req.url);
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
      answer = await this.fetcher(`${upstream}${url.pathname}${url.search}`, {
        method: req.method,
        headers: endToEndHeaders(req.headers),
        body: req.body,
        // A client that goes away aborts the engine's work on its request.
        signal: req.signal,
        redirect: "manual",
      });
    } catch (e) {
      finish();
      if (req.signal.aborted) return new Response(null, { status: 499 });
      this.#refused++;
      return openAiError(502, `lychd: the engine did not answer: ${(e as Error).message}`);
    }
    if (!answer.body) {
      finish();
      return new Response(null, {
        status: answer.status,
        headers: endToEndHeaders(answer.headers),
      });
    }
    // In flight until the last byte is relayed (or the client leaves): what drain waits for.
    let body = answer.body;
    if (completed) completed.then(finish, finish);
    else {
      body = answer.body.pipeThrough(new TransformStream({ flush: finish }), {
        signal: req.signal,
      });
      req.signal.addEventListener("abort", finish, { once: true });
    }
    return new Response(body, {
      status: answer.status,
      statusText: answer.statusText,
      headers: endToEndHeaders(answer.headers),
    });
  }
}
