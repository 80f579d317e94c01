/**
 * The gate's proxy core (lib/gate/proxy.ts) over real loopback HTTP: a small server plays the engine,
 * Deno.serve runs the gate, a fetch plays the client. SSE chunks are relayed as they come, a
 * client abort reaches the engine, 10 MB bodies pass both ways, hop-by-hop headers stop at the
 * gate, held requests go in arrival order, and too long or too many held get an OpenAI-shaped 503.
 */
import { freePort } from "./support/ports.ts";
import { Gate, type GateOptions } from "../lib/gate/proxy.ts";
import { assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { waitUntil, within } from "./support/wait.ts";

interface Server {
  url: string;
  close(): Promise<void>;
}

function serve(
  handler: (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>,
): Server {
  const s = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
  return { url: `http://127.0.0.1:${s.addr.port}`, close: () => s.shutdown() };
}

/**
 * An engine, a gate in front of it, and `fn` as the client; twice: with the server's completion
 * promise (how `lychd gate` serves) and without it (the body piped through a stream).
 */
async function withGate(
  engine: (req: Request) => Response | Promise<Response>,
  fn: (gate: Gate, url: string, engineUrl: string) => Promise<void>,
  options: GateOptions = { holdTimeoutMs: 5000, maxHeld: 256 },
  open = true,
) {
  for (const completion of [true, false]) {
    const upstream = serve(engine);
    const gate = new Gate(open ? upstream.url : null, options);
    const front = serve((req, info) =>
      gate.handle(req, { completed: completion ? info.completed : undefined })
    );
    try {
      await fn(gate, front.url, upstream.url);
    } finally {
      await front.close();
      await upstream.close();
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("gate: SSE chunks are relayed as the engine sends them, not buffered", async () => {
  let sendRest: () => void;
  let restMaySend: Promise<void>;
  await withGate(() => {
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        const e = new TextEncoder();
        c.enqueue(e.encode('data: {"n":1}\n\n'));
        // The rest only once the client has the first chunk: a gate that buffered never gets it.
        await restMaySend;
        c.enqueue(e.encode('data: {"n":2}\n\n'));
        c.enqueue(e.encode("data: [DONE]\n\n"));
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }, async (_gate, url) => {
    restMaySend = new Promise<void>((r) => sendRest = r);
    let reader: ReadableStreamDefaultReader<string>;
    let first: ReadableStreamReadResult<string>;
    try {
      const r = await within(
        fetch(`${url}/v1/chat/completions`, { method: "POST", body: "{}" }),
        "the answer, before the engine sent the rest",
      );
      assertEquals(r.headers.get("content-type"), "text/event-stream");
      reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
      first = await within(reader.read(), "the first chunk, before the engine sent the rest");
    } finally {
      sendRest!();
    }
    assertEquals(first.value, 'data: {"n":1}\n\n');
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += value;
    }
    assertEquals(rest, 'data: {"n":2}\n\ndata: [DONE]\n\n');
  });
});

Deno.test("gate: a client that goes away aborts the engine's request", async () => {
  let engineSawAbort: () => void;
  let aborted: Promise<void>;
  await withGate((req) => {
    req.signal.addEventListener("abort", () => engineSawAbort());
    // A stream that never ends, like a long generation.
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode("data: token\n\n"));
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }, async (gate, url) => {
    aborted = new Promise<void>((r) => engineSawAbort = r);
    const client = new AbortController();
    const r = await fetch(`${url}/v1/completions`, { method: "POST", signal: client.signal });
    const reader = r.body!.getReader();
    await reader.read();
    assertEquals(gate.counts().inFlight, 1);
    client.abort();
    await reader.cancel().catch(() => {});
    await within(aborted, "the engine to see the client go away");
    await waitUntil(() => gate.counts().inFlight === 0, "the request to leave the gate");
    assertEquals(gate.counts().inFlight, 0);
  });
});

Deno.test("gate: a client that goes away before the engine answered aborts it too (a long prefill)", async () => {
  let engineSawAbort: () => void;
  let aborted: Promise<void>;
  await withGate(async (req) => {
    req.signal.addEventListener("abort", () => engineSawAbort());
    await Promise.race([aborted, sleep(5000)]);
    return new Response("late");
  }, async (gate, url) => {
    aborted = new Promise<void>((r) => engineSawAbort = r);
    const client = new AbortController();
    const answer = fetch(`${url}/v1/completions`, { method: "POST", signal: client.signal })
      .catch(() => null);
    await waitUntil(() => gate.counts().inFlight === 1, "the request to reach the engine");
    client.abort();
    await answer;
    await within(aborted, "the engine to stop working for a client that had left");
  });
});

Deno.test("gate: 10 MB request and response bodies pass through unchanged", async () => {
  const big = new Uint8Array(10 * 1024 * 1024).map((_, i) => (i * 31) % 251);
  const digest = async (b: ArrayBuffer | Uint8Array) =>
    Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", b as Uint8Array<ArrayBuffer>)))
      .join(",");
  await withGate(async (req) => {
    const got = new Uint8Array(await req.arrayBuffer());
    return new Response(got, { headers: { "x-length": String(got.length) } });
  }, async (_gate, url) => {
    const r = await fetch(`${url}/v1/embeddings`, { method: "POST", body: big });
    assertEquals(r.status, 200);
    assertEquals(r.headers.get("x-length"), String(big.length));
    assertEquals(await digest(await r.arrayBuffer()), await digest(big));
  });
});

Deno.test("gate: end-to-end headers pass, hop-by-hop ones stop at the gate", async () => {
  let seen: Headers | null = null;
  await withGate((req) => {
    seen = req.headers;
    return new Response("ok", {
      headers: { "x-engine": "llama", "keep-alive": "timeout=5", "x-request-id": "abc" },
    });
  }, async (_gate, url) => {
    const r = await fetch(`${url}/v1/models?x=1`, {
      headers: {
        authorization: "Bearer sk-test",
        "x-trace": "t1",
        connection: "x-secret-hop",
        "x-secret-hop": "must not pass",
      },
    });
    assertEquals(await r.text(), "ok");
    assertEquals(r.headers.get("x-engine"), "llama");
    assertEquals(r.headers.get("x-request-id"), "abc");
    assertEquals(r.headers.get("keep-alive"), null);
    assertEquals(seen!.get("authorization"), "Bearer sk-test");
    assertEquals(seen!.get("x-trace"), "t1");
    assertEquals(seen!.get("x-secret-hop"), null);
  });
});

Deno.test("gate: a compressed engine answer reaches the client whole and decodable", async () => {
  const text = JSON.stringify({ choices: [{ text: "token ".repeat(2000) }] });
  const gzip = (s: string) =>
    new Response(new Blob([s]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer();
  // One engine compresses when asked (a gzip middleware), one whatever it is asked.
  for (const always of [false, true]) {
    await withGate(async (req) => {
      if (!always && !(req.headers.get("accept-encoding") ?? "").includes("gzip")) {
        return new Response(text, { headers: { "content-type": "application/json" } });
      }
      const body = await gzip(text);
      return new Response(body, {
        headers: {
          "content-type": "application/json",
          "content-encoding": "gzip",
          "content-length": String(body.byteLength),
        },
      });
    }, async (_gate, url) => {
      // Deno's fetch asks for gzip and decodes it, as client libraries do.
      const r = await fetch(`${url}/v1/completions`, { method: "POST", body: "{}" });
      assertEquals(r.status, 200);
      assertEquals(
        await r.text(),
        text,
        `engine that compresses ${always ? "always" : "when asked"}`,
      );
    });
  }
});

Deno.test("gate: held requests wait while closed and go to the engine in the order they came", async () => {
  const order: string[] = [];
  await withGate(
    (req) => {
      order.push(new URL(req.url).searchParams.get("n")!);
      return new Response(`served ${new URL(req.url).searchParams.get("n")}`);
    },
    async (gate, url, engineUrl) => {
      order.length = 0;
      const answers: Promise<string>[] = [];
      for (let n = 1; n <= 5; n++) {
        answers.push(fetch(`${url}/v1/completions?n=${n}`).then((r) => r.text()));
        // Arrival order is what the test fixes: the next one leaves once this one is held.
        await waitUntil(() => gate.counts().held === n, `request ${n} to be held`);
      }
      assertEquals(gate.counts().held, 5);
      assertDeep(order, [], "a held request reached the engine");
      gate.open(engineUrl);
      assertDeep(await Promise.all(answers), [1, 2, 3, 4, 5].map((n) => `served ${n}`));
      assertDeep(order, ["1", "2", "3", "4", "5"]);
    },
    { holdTimeoutMs: 5000, maxHeld: 256 },
    false,
  );
});

Deno.test("gate: held too long, or too many held: 503 with Retry-After and an OpenAI-shaped error", async () => {
  await withGate(
    () => new Response("never"),
    async (gate, url) => {
      const held = [fetch(`${url}/v1/completions`), fetch(`${url}/v1/completions`)];
      await waitUntil(() => gate.counts().held === 2, "two requests to be held");
      // The third is one too many.
      const third = await fetch(`${url}/v1/completions`);
      assertEquals(third.status, 503);
      // Retry-After: the hold timeout in whole seconds, rounded up.
      assertEquals(third.headers.get("retry-after"), "3");
      const body = await third.json();
      assertEquals(body.error.code, 503);
      assertEquals(body.error.type, "service_unavailable");
      assertMatch(body.error.message, /2 requests are already waiting/);
      // The first two time out.
      for (const r of await Promise.all(held)) {
        assertEquals(r.status, 503);
        assertMatch((await r.json()).error.message, /no engine was ready within 3 s/);
      }
      assertEquals(gate.counts().refused, 3);
      assertEquals(gate.counts().held, 0);
    },
    // Long enough that both are still held when the third comes, on a loaded machine too.
    { holdTimeoutMs: 3000, maxHeld: 2 },
    false,
  );
});

Deno.test("gate: drain waits for the requests in flight, bounded by its timeout", async () => {
  let finishSlow: () => void;
  let slowDone: Promise<void>;
  await withGate(async (req) => {
    if (new URL(req.url).pathname === "/slow") await slowDone;
    return new Response("done");
  }, async (gate, url, engineUrl) => {
    slowDone = new Promise<void>((r) => finishSlow = r);
    const slow = fetch(`${url}/slow`).then((r) => r.text());
    await waitUntil(() => gate.counts().inFlight === 1, "the slow request to reach the engine");
    assertDeep(await gate.drain(200), { drained: false, inFlight: 1 });
    // Closed by the drain: a new request is held, not sent to the old engine.
    const held = fetch(`${url}/v1/models`).then((r) => r.text());
    await waitUntil(() => gate.counts().held === 1, "the new request to be held");
    assertEquals(gate.counts().held, 1);
    const draining = gate.drain(60_000);
    finishSlow!();
    assertDeep(await draining, { drained: true, inFlight: 0 });
    assertEquals(await slow, "done");
    gate.open(engineUrl);
    assertEquals(await held, "done");
  });
});

Deno.test("gate: drain waits for a stream that is still being relayed", async () => {
  let endStream: () => void;
  await withGate(() => {
    const end = new Promise<void>((r) => endStream = r);
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(c) {
          c.enqueue(new TextEncoder().encode("data: 1\n\n"));
          await end;
          c.enqueue(new TextEncoder().encode("data: [DONE]\n\n"));
          c.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  }, async (gate, url) => {
    const r = await fetch(`${url}/v1/chat/completions`, { method: "POST" });
    const reader = r.body!.getReader();
    await reader.read();
    let early: unknown;
    try {
      // The headers are long sent; the generation is not over.
      early = await gate.drain(200);
    } finally {
      endStream!(); // whatever happened, so that the servers can shut down
    }
    assertDeep(early, { drained: false, inFlight: 1 });
    const draining = gate.drain(60_000);
    while (!(await reader.read()).done) { /* the rest */ }
    assertDeep(await draining, { drained: true, inFlight: 0 });
  });
});

Deno.test("gate: an engine that refuses the connection is a 503 in the same error shape, saying the request was not run", async () => {
  const gate = new Gate(`http://127.0.0.1:${freePort()}`, { holdTimeoutMs: 1000, maxHeld: 1 });
  try {
    const r = await gate.handle(new Request("http://127.0.0.1:8081/v1/models"));
    assertEquals(r.status, 503);
    const body = await r.json();
    assertEquals(body.error.code, 503);
    assertMatch(body.error.message, /refused the connection; your request was not run/);
  } finally {
    gate.dispose();
  }
});
