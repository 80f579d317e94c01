/**
 * The gate under faults, over real loopback HTTP: engines that drop a request they have read,
 * refuse connections, answer 503 while loading, get swapped out mid-request; clients that give
 * up while held; a gate that is stopped or shut down. Each answer is checked against its row in
 * tests/gate_outcomes.ts (the table docs/gate.md shows), and every engine counts how often it
 * ran each request: the promise is "never a wrong model, never run twice".
 */
import { CLIENT_GONE, Gate, type GateOptions } from "../lib/gate/proxy.ts";
import { OnDemand, type OnDemandOptions } from "../lib/gate/on_demand.ts";
import { resolveEngines } from "../lib/units/model.ts";
import { resolveConfig } from "../lib/config/load.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { outcome, outcomesTable } from "./gate_outcomes.ts";
import { waitUntil, within } from "./support/wait.ts";
import { freePort } from "./support/ports.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Check an answer against its row of the outcomes table. */
async function expectOutcome(r: Response, id: string) {
  const o = outcome(id);
  const text = await r.text();
  assertEquals(r.status, o.status, `${id}: ${text}`);
  const body = JSON.parse(text);
  assertEquals(body.error.code, o.status);
  assertMatch(body.error.message, o.match!);
  assertEquals(r.headers.get("retry-after") !== null, o.retryAfter, `${id}: Retry-After`);
}

interface Engine {
  url: string;
  port: number;
  /** How many requests it has read, by body. */
  ran: Map<string, number>;
  close(): Promise<void>;
}

/**
 * An HTTP engine on loopback. `behaviour` decides per request: an answer, or "drop" (it read
 * the whole request, then closes the connection without a word: a crash, a query of death).
 */
function engine(
  name: string,
  behaviour: (body: string, req: Request) => Response | "drop" | Promise<Response | "drop">,
  port = 0,
): Engine {
  const ran = new Map<string, number>();
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  const conns = new Set<Deno.Conn>();
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serveConn(conn).finally(() => {
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      });
    }
  })().catch(() => {});
  async function serveConn(conn: Deno.Conn) {
    // One request per connection, read whole (head, then a Content-Length or chunked body).
    const dec = new TextDecoder();
    let raw = new Uint8Array(0);
    const buf = new Uint8Array(65536);
    let body: string | null = null;
    let head = -1;
    for (;;) {
      const text = dec.decode(raw);
      head = text.indexOf("\r\n\r\n");
      if (head >= 0) {
        const headText = text.slice(0, head);
        const rest = text.slice(head + 4);
        if (/transfer-encoding: *chunked/i.test(headText)) {
          if (rest.endsWith("0\r\n\r\n")) {
            body = dechunk(rest);
            break;
          }
        } else {
          const length = Number(headText.match(/content-length: *([0-9]+)/i)?.[1] ?? 0);
          if (raw.length >= head + 4 + length) {
            body = rest;
            break;
          }
        }
      }
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return;
      const next = new Uint8Array(raw.length + n);
      next.set(raw);
      next.set(buf.subarray(0, n), raw.length);
      raw = next;
    }
    const text = dec.decode(raw);
    const [requestLine, ...headerLines] = text.slice(0, head).split("\r\n");
    ran.set(body, (ran.get(body) ?? 0) + 1);
    const [method, path] = requestLine.split(" ");
    const headers = new Headers(headerLines.map((l) => {
      const i = l.indexOf(":");
      return [l.slice(0, i), l.slice(i + 1).trim()] as [string, string];
    }));
    const r = await behaviour(body, new Request(`http://engine${path}`, { method, headers }));
    if (r === "drop") return;
    const out = await r.text();
    const lines = [
      `HTTP/1.1 ${r.status} X`,
      `content-length: ${new TextEncoder().encode(out).length}`,
    ];
    r.headers.forEach((v, k) => lines.push(`${k}: ${v}`));
    lines.push("x-engine: " + name, "connection: close", "", out);
    await conn.write(new TextEncoder().encode(lines.join("\r\n"))).catch(() => {});
  }
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    port: (listener.addr as Deno.NetAddr).port,
    ran,
    close: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await serving;
    },
  };
}

/** A chunked body's data (the test's own bodies are ASCII, so characters count as bytes). */
function dechunk(text: string): string {
  let out = "";
  for (let i = 0;;) {
    const eol = text.indexOf("\r\n", i);
    const size = parseInt(text.slice(i, eol), 16);
    if (!size) return out;
    out += text.slice(eol + 2, eol + 2 + size);
    i = eol + 2 + size + 2;
  }
}

/** The gate on loopback in front of `upstream`; `serving` says which engine serves there now. */
function gateFront(
  upstream: string | null,
  serving: () => { engine: string | null } | false,
  options: Partial<GateOptions> = {},
) {
  const gate = new Gate(upstream, {
    holdTimeoutMs: 30_000,
    maxHeld: 16,
    serving: () => Promise.resolve(serving()),
    probeIntervalMs: 20,
    ...options,
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) =>
      gate.handle(req, { completed: info.completed, client: info.remoteAddr.hostname }),
  );
  return {
    gate,
    url: `http://127.0.0.1:${server.addr.port}`,
    close: async () => {
      gate.shutdown(); // held requests answered: a failed test ends, not waits out its hold
      await server.shutdown();
      gate.dispose();
    },
  };
}

const post = (url: string, body: string, signal?: AbortSignal) =>
  fetch(`${url}/v1/completions`, {
    method: "POST",
    body,
    headers: { "content-type": "application/json" },
    signal,
  });

Deno.test("faults: a request an engine dropped after reading it is a 502, run once, never sent to the next engine", async () => {
  const alpha = engine("alpha", () => "drop");
  let active = "alpha";
  const front = gateFront(alpha.url, () => ({ engine: active }));
  front.gate.open(alpha.url, "alpha");
  try {
    const r = await post(front.url, '{"model":"a","n":1}');
    await expectOutcome(r, "engine_lost");
    assertEquals(alpha.ran.get('{"model":"a","n":1}'), 1, "run more than once");
    // The engine that takes over never sees it.
    active = "beta";
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults: a query of death crashes its engine once, not three times", async () => {
  // The engine exits on the request: it reads it, drops it, and refuses connections until it is
  // back (systemd restarts it).
  let crashes = 0;
  let up: Engine | null = null;
  const port = freePort();
  const start = () => {
    up = engine("alpha", async (body) => {
      if (body.includes("death")) {
        crashes++;
        const dead = up!;
        up = null;
        setTimeout(() => dead.close().then(() => setTimeout(start, 200)), 0);
        return "drop";
      }
      await sleep(0);
      return new Response('{"ok":true}');
    }, port);
  };
  start();
  const front = gateFront(`http://127.0.0.1:${port}`, () => up ? { engine: "alpha" } : false);
  front.gate.open(`http://127.0.0.1:${port}`, "alpha");
  try {
    const r = await post(front.url, '{"prompt":"death"}');
    await expectOutcome(r, "engine_lost");
    await waitUntil(() => up !== null, "the engine to be back");
    const ok = await post(front.url, '{"prompt":"fine"}');
    assertEquals(ok.status, 200, await ok.clone().text());
    await ok.body?.cancel();
    assertEquals(crashes, 1);
  } finally {
    await front.close();
    const last = up as Engine | null;
    await last?.close();
  }
});

Deno.test("faults: after an engine went away mid-request, the next requests are held until it serves again", async () => {
  // Dead behind a port that still accepts (rootless Podman's port forwarder does, for a killed
  // container): every connection is taken and closed. Sent there, each request would be a 502.
  let dead = true;
  const alpha = engine("alpha", () => dead ? "drop" : new Response('{"from":"alpha"}'));
  const front = gateFront(alpha.url, () => dead ? false : { engine: "alpha" });
  front.gate.open(alpha.url, "alpha");
  try {
    await expectOutcome(await post(front.url, '{"n":1}'), "engine_lost");
    const answer = post(front.url, '{"n":2}');
    let held = false;
    await Promise.race([
      waitUntil(() => front.gate.counts().held === 1, "the next request to be held")
        .then(() => held = true),
      answer.then(async (r) => {
        if (held) return;
        throw new Error(
          `answered while the engine was away: ${r.status} ${await r.clone().text()}`,
        );
      }),
    ]);
    dead = false; // systemd restarted it
    const r = await answer;
    assertDeep([r.status, await r.text()], [200, '{"from":"alpha"}']);
    assertDeep([alpha.ran.get('{"n":1}'), alpha.ran.get('{"n":2}')], [1, 1]);
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults: a refused request is held and sent once more to the same engine when it serves again", async () => {
  const port = freePort();
  let alpha: Engine | null = null;
  const front = gateFront(`http://127.0.0.1:${port}`, () => alpha ? { engine: "alpha" } : false);
  front.gate.open(`http://127.0.0.1:${port}`, "alpha");
  try {
    const answer = post(front.url, '{"n":7}');
    await waitUntil(() => front.gate.counts().held === 1, "the refused request to be held");
    alpha = engine("alpha", () => new Response('{"from":"alpha"}'), port);
    const r = await answer;
    assertEquals(r.status, 200);
    assertEquals(r.headers.get("x-engine"), "alpha");
    assertEquals(alpha.ran.get('{"n":7}'), 1);
  } finally {
    await front.close();
    const last = alpha as Engine | null;
    await last?.close();
  }
});

Deno.test("faults: a refused request whose engine was swapped out meanwhile is not sent to the new one", async () => {
  const port = freePort();
  let serving: { engine: string } | false = false;
  const front = gateFront(`http://127.0.0.1:${port}`, () => serving);
  front.gate.open(`http://127.0.0.1:${port}`, "alpha");
  let beta: Engine | null = null;
  try {
    const answer = post(front.url, '{"model":"alpha-model"}');
    await waitUntil(() => front.gate.counts().held === 1, "the refused request to be held");
    // A swap: beta serves on the engine port now, and the gate is opened to it.
    beta = engine("beta", () => new Response('{"from":"beta"}'), port);
    serving = { engine: "beta" };
    front.gate.open(`http://127.0.0.1:${port}`, "beta");
    await expectOutcome(await answer, "swapped_out");
    assertEquals(beta.ran.size, 0, "beta ran a request meant for alpha");
  } finally {
    await front.close();
    const last = beta as Engine | null;
    await last?.close();
  }
});

Deno.test("faults: refused, held, and refused again: a 503 that says it was not run (one resend in all)", async () => {
  const port = freePort();
  // The engine says it serves (its probe answered), but refuses this request's connection.
  let probes = 0;
  const front = gateFront(`http://127.0.0.1:${port}`, () => {
    probes++;
    return { engine: "alpha" };
  });
  front.gate.open(`http://127.0.0.1:${port}`, "alpha");
  try {
    await expectOutcome(await post(front.url, "{}"), "refused_twice");
    assertEquals(probes, 1, "the gate sent it more than twice");
  } finally {
    await front.close();
  }
});

Deno.test("faults: an engine's 503 while it loads reaches no client: the request is held until it serves", async () => {
  let loading = true;
  const llama = engine(
    "llama",
    () =>
      loading
        ? new Response('{"error":{"message":"Loading model","code":503}}', { status: 503 })
        : new Response('{"ok":true}'),
  );
  const front = gateFront(llama.url, () => loading ? false : { engine: "llama" });
  front.gate.open(llama.url, "llama");
  try {
    const answer = post(front.url, '{"n":1}');
    await waitUntil(() => front.gate.counts().held === 1, "the request to be held");
    loading = false;
    const r = await answer;
    assertEquals(r.status, 200, await r.clone().text());
    assertEquals(await r.text(), '{"ok":true}');
    assertEquals(llama.ran.get('{"n":1}'), 2, "the 503 and the answer");
  } finally {
    await front.close();
    await llama.close();
  }
});

Deno.test("faults: a swap's cut after the drain timeout is a 502 that says so", async () => {
  let release: () => void = () => {};
  const slow = engine(
    "vllm",
    () => new Promise<Response>((r) => release = () => r(new Response("late"))),
  );
  const front = gateFront(slow.url, () => ({ engine: "vllm" }));
  front.gate.open(slow.url, "vllm");
  try {
    const answer = post(front.url, '{"long":true}');
    await waitUntil(() => front.gate.counts().inFlight === 1, "the request to be in flight");
    assertEquals((await front.gate.drain(50)).drained, false);
    assertEquals(front.gate.cut(), 1);
    await expectOutcome(await answer, "cut_by_swap");
    assertEquals(front.gate.counts().inFlight, 0);
  } finally {
    release();
    await front.close();
    await slow.close();
  }
});

Deno.test("faults: a client that gives up while held leaves the queue at once", async () => {
  const alpha = engine("alpha", () => new Response("ok"));
  const front = gateFront(null, () => false, { maxHeld: 2 });
  try {
    const quitters = [new AbortController(), new AbortController()];
    const gone = quitters.map((c) => post(front.url, "{}", c.signal).catch(() => "aborted"));
    await waitUntil(() => front.gate.counts().held === 2, "two held");
    for (const c of quitters) c.abort();
    assertDeep(await Promise.all(gone), ["aborted", "aborted"]);
    await waitUntil(() => front.gate.counts().held === 0, "the quitters to leave the queue");
    // A live client finds room, and is served once the engine is there.
    const live = post(front.url, "{}");
    await waitUntil(() => front.gate.counts().held === 1, "the live one held");
    front.gate.open(alpha.url, "alpha");
    const r = await live;
    assertEquals(r.status, 200);
    assertEquals(await r.text(), "ok");
    assertEquals(alpha.ran.get("{}"), 1, "a quitter reached the engine");
    const m = front.gate.metrics();
    assertMatch(m, new RegExp(`lychd_gate_requests_total\\{engine="",code="${CLIENT_GONE}"\\} 2`));
    assertMatch(m, /lychd_gate_refused_total\{reason="engine_error"\} 0/);
    assertMatch(m, /lychd_gate_hold_wait_seconds_count\{engine=""\} 3/);
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults: held requests take no body memory; a full queue answers before reading one", async () => {
  const front = gateFront(null, () => false, { maxHeld: 4 });
  try {
    const big = "x".repeat(1 << 20);
    const held = Array.from({ length: 4 }, () => post(front.url, big).catch(() => null));
    await waitUntil(() => front.gate.counts().held === 4, "four held");
    assertEquals(front.gate.budget.used(), 0, "held bodies were read into memory");
    await expectOutcome(await post(front.url, big), "queue_full");
    front.gate.shutdown();
    for (const r of await Promise.all(held)) await expectOutcome(r!, "restarting");
  } finally {
    await front.close();
  }
});

Deno.test("faults: Retry-After is what the last swap took, not the whole hold", async () => {
  const front = gateFront(null, () => false, { maxHeld: 1, holdTimeoutMs: 600_000 });
  try {
    front.gate.recordSwap({
      from: "vllm",
      to: "llama",
      result: "ok",
      phases: { drain: 0.5, stop: 1, start: 1, load: 3.2 },
      at: Date.now(),
    });
    front.gate.close(600_000);
    const held = post(front.url, "{}").catch(() => null);
    await waitUntil(() => front.gate.counts().held === 1, "one held");
    const full = await post(front.url, "{}");
    await expectOutcome(full.clone(), "queue_full");
    const retry = Number(full.headers.get("retry-after"));
    assert(retry >= 1 && retry <= 6, `Retry-After ${retry}: expected the last swap's 5.7 s`);
    front.gate.shutdown();
    await held;
  } finally {
    await front.close();
  }
});

Deno.test("faults: after lychd stop, requests get a 503 at once that names the fix", async () => {
  const front = gateFront(null, () => false);
  try {
    const waiting = post(front.url, "{}");
    await waitUntil(() => front.gate.counts().held === 1, "one held");
    front.gate.stop(
      "no engine is active (stopped by `lychd stop`): start one with `lychd swap ENGINE`",
    );
    await expectOutcome(await waiting, "stopped");
    const t0 = Date.now();
    await expectOutcome(await post(front.url, "{}"), "stopped");
    assert(front.gate.counts().held === 0);
    assert(Date.now() - t0 < 25_000, "held instead of answered");
    // A swap opens it again.
    front.gate.close(1000);
    assertEquals(front.gate.stopped(), null);
  } finally {
    await front.close();
  }
});

Deno.test("faults: a redirect names the gate, not the engine's address; the engine learns who asked", async () => {
  let seen: Headers | null = null;
  const e = engine("alpha", (_b, req) => {
    seen = req.headers;
    return new Response(null, { status: 307, headers: { location: `${e.url}/v1/elsewhere` } });
  });
  const front = gateFront(e.url, () => ({ engine: "alpha" }));
  front.gate.open(e.url, "alpha");
  try {
    const r = await fetch(`${front.url}/v1/models`, { redirect: "manual" });
    await r.body?.cancel();
    assertEquals(r.status, 307);
    assertEquals(r.headers.get("location"), `${front.url}/v1/elsewhere`);
    const h = seen! as Headers;
    assertEquals(h.get("x-forwarded-for"), "127.0.0.1");
    assertEquals(h.get("x-forwarded-proto"), "http");
    assertEquals(h.get("x-forwarded-host"), new URL(front.url).host);
  } finally {
    await front.close();
    await e.close();
  }
});

Deno.test("faults: a WebSocket upgrade is a 501, not a downgraded answer", async () => {
  const e = engine("alpha", () => new Response('{"ok":true}'));
  const front = gateFront(e.url, () => ({ engine: "alpha" }));
  front.gate.open(e.url, "alpha");
  try {
    const r = await fetch(`${front.url}/v1/realtime`, {
      headers: { upgrade: "websocket", connection: "upgrade" },
    });
    await expectOutcome(r, "upgrade");
    assertEquals(e.ran.size, 0);
  } finally {
    await front.close();
    await e.close();
  }
});

/** Two engines for on demand (vllm serves model-a, sglang model-b) and an OnDemand over the gate. */
function onDemandEngines() {
  const { config } = resolveConfig(
    "engines: [vllm, sglang]\ngate: {on_demand: true}\n" +
      "cartridges: {vllm: {model: model-a}, sglang: {model: model-b}}\n",
    "/x/lychd.yaml",
    [],
  );
  return resolveEngines(config);
}

function onDemandFront(
  gate: Gate,
  swap: (engine: string) => Promise<boolean>,
  minResidencyMs = 1000,
  extra: Partial<OnDemandOptions> = {},
) {
  const onDemand = new OnDemand(gate, onDemandEngines(), {
    minResidencyMs,
    swap,
    log: () => {},
    ...extra,
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) =>
      onDemand.handle(req, { completed: info.completed, client: info.remoteAddr.hostname }),
  );
  return {
    onDemand,
    url: `http://127.0.0.1:${server.addr.port}`,
    close: async () => {
      gate.shutdown();
      await server.shutdown();
      gate.dispose();
    },
  };
}

Deno.test("faults, on demand: an engine that is recovering is not swapped to", async () => {
  let up = false;
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  const gate = new Gate(alpha.url, {
    holdTimeoutMs: 30_000,
    maxHeld: 8,
    serving: () => Promise.resolve(up ? { engine: "vllm" } : false),
    probeIntervalMs: 20,
  });
  const swaps: string[] = [];
  const front = onDemandFront(gate, (e) => {
    swaps.push(e);
    return Promise.resolve(false);
  });
  try {
    // alpha crashed: the gate waits for it to serve again.
    gate.recover(alpha.url, "vllm");
    const answer = post(front.url, '{"model":"model-a"}');
    await waitUntil(() => gate.counts().held === 1, "held for vllm");
    await sleep(1500); // longer than min_residency: on demand had every chance to swap
    assertDeep(swaps, [], "on demand swapped to the engine that was recovering");
    up = true;
    const r = await answer;
    assertEquals(await r.text(), '{"from":"alpha"}');
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: a request that gave up while held starts no swap", async () => {
  const alpha = engine("vllm", () => new Response('{"from":"vllm"}'));
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const swaps: string[] = [];
  const front = onDemandFront(gate, (e) => {
    swaps.push(e);
    return Promise.resolve(true);
  }, 1500);
  try {
    // vllm is busy (a request just now), so its residency holds a request for sglang back.
    await (await post(front.url, '{"model":"model-a"}')).text();
    const quitter = new AbortController();
    const gone = post(front.url, '{"model":"model-b"}', quitter.signal).catch(() => null);
    await waitUntil(() => gate.counts().held === 1, "held for sglang");
    quitter.abort();
    await gone;
    await waitUntil(() => gate.counts().held === 0, "the quitter to leave");
    await sleep(2000); // past the residency: the held request would have started its swap now
    assertDeep(swaps, [], "an abandoned request started a swap");
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: an engine that failed to start is refused for a while, not retried per request", async () => {
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  const gate = new Gate(alpha.url, {
    holdTimeoutMs: 30_000,
    maxHeld: 8,
    serving: () => Promise.resolve({ engine: "vllm" }),
    probeIntervalMs: 20,
  });
  gate.open(alpha.url, "vllm");
  const swaps: string[] = [];
  const front = onDemandFront(gate, (e) => {
    swaps.push(e);
    return Promise.resolve(false);
  });
  try {
    await expectOutcome(await post(front.url, '{"model":"model-b"}'), "swap_failed");
    assertDeep(swaps, ["sglang"]);
    for (let i = 0; i < 3; i++) {
      await expectOutcome(await post(front.url, '{"model":"model-b"}'), "backoff");
    }
    assertDeep(swaps, ["sglang"], "a failed engine was tried again at once");
    // alpha serves on, untouched.
    const r = await post(front.url, '{"model":"model-a"}');
    assertEquals(await r.text(), '{"from":"alpha"}');
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: the model is read from large and chunked bodies, after a big field; unreadable is a 400", async () => {
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const swaps: string[] = [];
  const front = onDemandFront(gate, (e) => {
    swaps.push(e);
    return Promise.resolve(false);
  });
  try {
    // 2 MiB of image before the model, as OpenAI's client orders the fields.
    const image = `"data:image/png;base64,${"A".repeat(2 << 20)}"`;
    const body = `{"messages":[{"role":"user","content":[{"type":"image_url",` +
      `"image_url":{"url":${image}}},{"type":"text","text":"model: model-a"}]}],"model":"model-b"}`;
    await expectOutcome(await post(front.url, body), "swap_failed");
    assertDeep(swaps, ["sglang"]);
    // Chunked (no Content-Length), the model after a nested object with a "model" key in it.
    const chunked = new ReadableStream<Uint8Array>({
      start(c) {
        const e = new TextEncoder();
        c.enqueue(e.encode('{"extra":{"model":"model-b"},'));
        c.enqueue(e.encode('"model":"model-a","prompt":"hi"}'));
        c.close();
      },
    });
    const r = await fetch(`${front.url}/v1/completions`, {
      method: "POST",
      body: chunked,
      headers: { "content-type": "application/json" },
    });
    assertEquals(await r.text(), '{"from":"alpha"}');
    assertEquals(alpha.ran.get('{"extra":{"model":"model-b"},"model":"model-a","prompt":"hi"}'), 1);
    // (A body that is cut off after its model goes to that model's engine, which judges it.)
    const twice = '{"model":"model-a","model":"model-b"}'; // JSON.parse takes the last
    for (const bad of ['{"model": 42}', '{"prompt": "x"', "[1,2]", '{"model": "a\\q"}', twice]) {
      await expectOutcome(await post(front.url, bad), "no_model");
    }
    // A byte order mark is no reason to refuse (JSON.parse skips it).
    const bom = await post(front.url, '\ufeff{"model":"model-a"}');
    assertEquals(await bom.text(), '{"from":"alpha"}');
    // A body without a model goes to the engine that serves.
    assertEquals(await (await post(front.url, '{"prompt":"x"}')).text(), '{"from":"alpha"}');
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: the bytes read for models are capped in all; within the cap all is served", async () => {
  const alpha = engine("vllm", () => new Response('{"from":"vllm"}'));
  const gate = new Gate(alpha.url, {
    holdTimeoutMs: 30_000,
    maxHeld: 8,
    maxBufferedBytes: 64 << 10,
  });
  gate.open(alpha.url, "vllm");
  const front = onDemandFront(gate, () => Promise.resolve(false));
  try {
    const big = `{"prompt":"${"x".repeat(200 << 10)}","model":"model-a"}`;
    await expectOutcome(await post(front.url, big), "buffer_full");
    assertEquals(alpha.ran.size, 0);
    // Many small ones at once fit, and the room comes back after each.
    const small = await Promise.all(
      Array.from({ length: 20 }, (_, i) => post(front.url, `{"model":"model-a","n":${i}}`)),
    );
    for (const r of small) assertEquals(await r.text(), '{"from":"vllm"}');
    assertEquals(gate.budget.used(), 0);
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults: a request whose body was still uploading when a swap drained goes to the engine that serves after it", async () => {
  const old = engine("llama", () => new Response('{"from":"llama"}'));
  const next = engine("vllm", () => new Response('{"from":"vllm"}'));
  const front = gateFront(old.url, () => ({ engine: "llama" }));
  front.gate.open(old.url, "llama");
  try {
    // Let through while open, its body half sent...
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: Number(new URL(front.url).port),
    });
    const body = '{"prompt":"slow upload"}';
    await conn.write(new TextEncoder().encode(
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
        `content-length: ${body.length}\r\nconnection: close\r\n\r\n${body.slice(0, 10)}`,
    ));
    await sleep(200);
    // ...while a swap drains (nothing counted in flight), stops llama and opens to vllm.
    assertDeep(await front.gate.drain(1000), { drained: true, inFlight: 0 });
    await old.close();
    front.gate.open(next.url, "vllm");
    await conn.write(new TextEncoder().encode(body.slice(10)));
    const answer = new TextDecoder().decode(await readAll(conn));
    assertMatch(answer, /^HTTP\/1\.1 200/);
    assertMatch(answer, /\{"from":"vllm"\}/);
    assertEquals(old.ran.size, 0);
  } finally {
    await front.close();
    await next.close();
  }
});

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  conn.close();
  return new Uint8Array(chunks.flatMap((c) => [...c]));
}

Deno.test("faults: a cut or broken stream is done for the drain also when piped (no server completion)", async () => {
  let release: () => void = () => {};
  const stream = engine(
    "vllm",
    () => new Promise<Response>((r) => release = () => r(new Response("never"))),
  );
  const gate = new Gate(stream.url, { holdTimeoutMs: 30_000, maxHeld: 4 });
  gate.open(stream.url, "vllm");
  try {
    // An engine body that breaks off mid-stream, relayed without Deno.serve's completion.
    const upstream = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () =>
        new Response(
          new ReadableStream<Uint8Array>({
            start(c) {
              c.enqueue(new TextEncoder().encode("data: 1\n\n"));
            },
          }),
          { headers: { "content-type": "text/event-stream" } },
        ),
    );
    gate.open(`http://127.0.0.1:${upstream.addr.port}`, "vllm");
    const r = await gate.handle(new Request("http://gate/v1/completions", { method: "POST" }));
    const reader = r.body!.getReader();
    await reader.read();
    assertEquals(gate.counts().inFlight, 1);
    assertEquals(gate.cut(), 1);
    await reader.read().catch(() => null);
    await waitUntil(() => gate.counts().inFlight === 0, "the cut stream to be done");
    await upstream.shutdown();
  } finally {
    release();
    gate.dispose();
    await stream.close();
  }
});

Deno.test("faults, on demand: no swap of its own while lychd swap holds the gate", async () => {
  const alpha = engine("vllm", () => new Response('{"from":"vllm"}'));
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const swaps: string[] = [];
  const front = onDemandFront(gate, (e) => {
    swaps.push(e);
    return Promise.resolve(true);
  }, 600_000);
  try {
    await (await post(front.url, '{"model":"model-a"}')).text();
    gate.close(30_000, alpha.url); // lychd swap sglang, under way
    const waiting = post(front.url, '{"model":"model-b"}');
    await waitUntil(() => gate.counts().held === 1, "held for sglang");
    await sleep(300);
    assertDeep(swaps, [], "on demand raced lychd swap");
    gate.open(alpha.url, "sglang"); // the swap is done
    assertEquals(await (await waiting).text(), '{"from":"vllm"}');
    assertDeep(swaps, []);
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: bytes read for the model are not counted twice (a loading 503 is still held)", async () => {
  let loading = true;
  const llama = engine("vllm", () => {
    if (!loading) return new Response('{"ok":true}');
    loading = false;
    return new Response('{"error":"Loading model"}', { status: 503 });
  });
  const gate = new Gate(llama.url, {
    holdTimeoutMs: 30_000,
    maxHeld: 8,
    maxBufferedBytes: 150_000,
    serving: () => Promise.resolve(loading ? false : { engine: "vllm" }),
    probeIntervalMs: 20,
  });
  gate.open(llama.url, "vllm");
  const front = onDemandFront(gate, () => Promise.resolve(false));
  try {
    const body = `{"model":"model-a","prompt":"${"x".repeat(100_000)}"}`;
    const r = await post(front.url, body);
    assertEquals(r.status, 200, await r.clone().text());
    assertEquals(await r.text(), '{"ok":true}');
    assertEquals(llama.ran.get(body), 2, "the 503 and the answer");
    assertEquals(gate.budget.used(), 0);
  } finally {
    await front.close();
    await llama.close();
  }
});

Deno.test("faults: docs/gate.md shows the outcomes table as tests/gate_outcomes.ts has it", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/gate.md", import.meta.url));
  // Cells, not characters: deno fmt pads a Markdown table's columns.
  const cells = (table: string) =>
    table.split("\n").filter((l) => l.startsWith("|") && !/^\|[\s|:-]+\|$/.test(l)).map((l) =>
      l.slice(1, -1).split(" | ").map((c) => c.trim())
    );
  const section = doc.slice(doc.indexOf("## What a client sees"));
  const shown = section.slice(0, section.indexOf("\n\n", section.indexOf("\n|")));
  assertDeep(
    cells(shown),
    cells(outcomesTable()),
    `docs/gate.md's table should read:\n${outcomesTable()}`,
  );
});

Deno.test("faults: a recovery's probe that comes back after a newer recovery began opens nothing", async () => {
  // Every engine sits behind the same engine port: only the newest probe may open the gate.
  const probes: ((found: { engine: string } | false) => void)[] = [];
  const gate = new Gate(null, {
    holdTimeoutMs: 30_000,
    maxHeld: 16,
    serving: () => new Promise((r) => probes.push(r)),
    probeIntervalMs: 20,
  });
  const upstream = "http://127.0.0.1:9";
  try {
    gate.recover(upstream, "alpha"); // alpha crashed: probing
    await waitUntil(() => probes.length === 1, "the first probe");
    gate.open(upstream, "beta"); // a swap put beta there meanwhile
    gate.recover(upstream, "beta"); // and beta went away too
    await waitUntil(() => probes.length === 2, "beta's probe");
    probes[0]({ engine: "alpha" }); // the first probe's answer, late
    await sleep(0);
    assertDeep([gate.isOpen(), gate.target()], [false, "beta"]);
    probes[1]({ engine: "beta" });
    await waitUntil(() => gate.isOpen(), "the gate to open to beta");
    assertEquals(gate.engine(), "beta");
  } finally {
    gate.shutdown();
    gate.dispose();
  }
});

Deno.test("faults: a client that cuts off its streamed upload does not make the gate doubt its engine", async () => {
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    await req.arrayBuffer().catch(() => {});
    return new Response("ok");
  });
  const url = `http://127.0.0.1:${upstream.addr.port}`;
  let probes = 0;
  const front = gateFront(url, () => (probes++, { engine: "alpha" }));
  front.gate.open(url, "alpha");
  const port = Number(new URL(front.url).port);
  try {
    // 4 MiB announced (streamed: over the 1 MiB the gate keeps for a resend), 1 MiB sent.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode(
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: ${4 << 20}\r\n\r\n`,
    ));
    await conn.write(new Uint8Array(1 << 20));
    await waitUntil(() => front.gate.counts().inFlight === 1, "the upload to be forwarded");
    conn.close();
    await waitUntil(() => front.gate.counts().inFlight === 0, "the request to end");
    assertDeep([front.gate.isOpen(), probes], [true, 0]);
  } finally {
    await front.close();
    await upstream.shutdown();
  }
});

/** A streaming request for model-b (sglang) through `front`, and a reader of its answer. */
async function streamFor(front: { url: string }) {
  const r = await within(
    fetch(`${front.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"model":"model-b","messages":[],"stream":true}',
    }),
    "the answer's headers, while the request is still held",
  );
  const reader = r.body!.getReader();
  let text = "";
  return {
    status: r.status,
    type: r.headers.get("content-type"),
    /** Read until `pattern` shows in what came so far. */
    async until(pattern: RegExp) {
      while (!pattern.test(text)) {
        const { value, done } = await within(reader.read(), `${pattern} in the stream`);
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      return text;
    },
  };
}

/**
 * An on-demand front whose swaps close the gate and then wait for the test (an engine that loads
 * longer than a client waits in silence): `end(url, engine, ok)` opens the gate to `engine` at
 * `url` and ends the swap (ok: it succeeded; else rolled back to what `url` serves).
 */
function slowSwapFront(gate: Gate) {
  const ends: ((url: string, engine: string, ok: boolean) => void)[] = [];
  const front = onDemandFront(
    gate,
    () => {
      gate.close();
      return new Promise<boolean>((done) =>
        ends.push((url, engine, ok) => {
          gate.open(url, engine);
          done(ok);
        })
      );
    },
    0,
    { streamAfterMs: 50, streamBeatMs: 50 },
  );
  return {
    ...front,
    async end(url: string, engine: string, ok = true) {
      await waitUntil(() => ends.length > 0, "the swap to start");
      ends.shift()!(url, engine, ok);
    },
  };
}

Deno.test("faults, on demand: a streaming request held long gets its 200 and SSE comments, then the engine's stream", async () => {
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  const beta = engine("beta", () =>
    new Response('data: {"from":"beta"}\n\ndata: [DONE]\n\n', {
      headers: { "content-type": "text/event-stream" },
    }));
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const front = slowSwapFront(gate);
  try {
    const s = await streamFor(front);
    assertDeep([s.status, s.type], [200, "text/event-stream"]);
    const waiting = await s.until(/(: lychd: waiting for sglang[^\n]*\n\n){2}/);
    assert(!waiting.includes("data:"), waiting);
    await front.end(beta.url, "sglang");
    const all = await s.until(/data: \[DONE\]/);
    assertMatch(all, /\n\ndata: \{"from":"beta"\}\n\ndata: \[DONE\]\n\n$/);
    // A request that does not stream keeps the engine's own status, held or not.
    const plain = await post(front.url, '{"model":"model-b"}');
    assertDeep([plain.status, await plain.text()], [
      200,
      'data: {"from":"beta"}\n\ndata: [DONE]\n\n',
    ]);
  } finally {
    await front.close();
    await alpha.close();
    await beta.close();
  }
});

Deno.test("faults, on demand: a streaming request held long whose swap fails ends with one SSE error event", async () => {
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const front = slowSwapFront(gate);
  try {
    const s = await streamFor(front);
    assertEquals(s.status, 200);
    await s.until(/: lychd: waiting for sglang/);
    await front.end(alpha.url, "vllm", false); // rolled back
    const all = await s.until(/\ndata: [^\n]*\n\n$/);
    const events = all.split("\n\n").filter((e) => e.startsWith("data: "));
    assertEquals(events.length, 1, all);
    const { error } = JSON.parse(events[0].slice(6));
    assertEquals(error.code, 503);
    assertMatch(error.message, /the swap to sglang failed/);
  } finally {
    await front.close();
    await alpha.close();
  }
});

Deno.test("faults, on demand: a streaming request held long gets a plain 200 as one event, and an engine's error in OpenAI's shape", async () => {
  const alpha = engine("alpha", () => new Response('{"from":"alpha"}'));
  let answer = new Response('{"id":"cmpl-1","choices":[]}', {
    headers: { "content-type": "application/json" },
  });
  const beta = engine("beta", () => answer);
  const gate = new Gate(alpha.url, { holdTimeoutMs: 30_000, maxHeld: 8 });
  gate.open(alpha.url, "vllm");
  const front = slowSwapFront(gate);
  try {
    // The engine ignored `stream`: its answer is not lost, nor made an error.
    let s = await streamFor(front);
    await s.until(/: lychd: waiting for sglang/);
    await front.end(beta.url, "sglang");
    let all = await s.until(/data: \[DONE\]\n\n$/);
    assertMatch(all, /\n\ndata: \{"id":"cmpl-1","choices":\[\]\}\n\ndata: \[DONE\]\n\n$/);
    // An error whose `error` is a string: the event carries it in OpenAI's shape.
    answer = new Response('{"error":"context too long"}', { status: 400 });
    gate.close();
    s = await streamFor(front);
    await s.until(/: lychd: waiting for/);
    gate.open(beta.url, "sglang");
    all = await s.until(/\ndata: [^\n]*\n\n$/);
    const events = all.split("\n\n").filter((e) => e.startsWith("data: "));
    assertDeep(events.map((e) => JSON.parse(e.slice(6))), [{
      error: { message: "context too long", type: "server_error", param: null, code: 400 },
    }]);
  } finally {
    await front.close();
    await alpha.close();
    await beta.close();
  }
});
