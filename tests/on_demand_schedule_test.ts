/**
 * On demand's scheduling promises (docs/gate.md, "On demand: when it swaps"), against a real
 * Gate over loopback HTTP, on a clock the test moves (how fast the machine is decides nothing):
 * an engine with nothing to do goes after a quiet window that follows the cost of a swap; an
 * engine that keeps getting requests stays its residency (the swap-rate bound, and the bound on
 * how long a request for another engine waits); the oldest held request picks the next engine
 * (none starves), and every held request for it goes with it (collation: A A B B, not A B A B).
 */
import { assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { resolveConfig } from "../lib/config/load.ts";
import { Gate } from "../lib/gate/proxy.ts";
import { OnDemand, QUIET_DIVISOR_MAX, QUIET_MAX_MS } from "../lib/gate/on_demand.ts";
import { resolveEngines } from "../lib/units/model.ts";
import { ModelScanner } from "../lib/gate/model_scan.ts";
import { waitUntil, within } from "./support/wait.ts";

/**
 * Three engines behind one upstream that records which model each request named, in the order
 * it served them; a request whose body says `"slow": true` is answered only when `finish()` is
 * called. A swap takes `swapMs` on the test's clock.
 */
function scheduler(minResidencyMs: number, swapMs: number, clock: { now: number }) {
  const { config } = resolveConfig(
    "engines: [vllm, sglang, llama]\ngate: {on_demand: true}\n" +
      "cartridges: {vllm: {model: m/vllm}, sglang: {model: m/sglang}, llama: {model: m/llama}}\n",
    "/x/lychd.yaml",
    [],
  );
  const served: string[] = [];
  const slow: (() => void)[] = [];
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.json();
    if (body.slow) await new Promise<void>((r) => slow.push(r));
    served.push(body.model.slice(2));
    return new Response("ok");
  });
  const url = `http://127.0.0.1:${upstream.addr.port}`;
  const gate = new Gate(url, { holdTimeoutMs: 60_000, maxHeld: 20 });
  gate.open(url, "vllm");
  const swaps: string[] = [];
  const od = new OnDemand(gate, resolveEngines(config), {
    minResidencyMs,
    now: () => clock.now,
    log: () => {},
    swap: (engine) => {
      swaps.push(engine);
      gate.close();
      clock.now += swapMs;
      // As lychd swap reports it: its phases, the drain not counted in what it costs.
      gate.recordSwap({
        from: gate.target(),
        to: engine,
        result: "ok",
        phases: { drain: 9, stop: swapMs / 4000, start: swapMs / 4000, load: swapMs / 2000 },
        at: Date.now(),
      });
      gate.open(url, engine);
      return Promise.resolve(true);
    },
  });
  const ask = (model: string, slow = false) =>
    od.handle(
      new Request("http://127.0.0.1:8081/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: `m/${model}`, slow }),
      }),
    ).then((r) => r.text());
  return {
    gate,
    od,
    swaps,
    served,
    ask,
    /**
     * Wait until `n` slow requests wait at the engine: in flight at the gate is not enough, as
     * the engine may not have read the body yet, and `finish()` would find nothing to let go.
     */
    parked: (n: number) => waitUntil(() => slow.length === n, `${n} at the engine`),
    /** Let the slow requests answer. */
    finish: () => slow.splice(0).forEach((r) => r()),
    held: (n: number) => waitUntil(() => gate.counts().held === n, `${n} held`),
    idle: () => waitUntil(() => gate.counts().inFlight === 0, "nothing in flight"),
    close: async () => {
      slow.splice(0).forEach((r) => r()); // a failed test leaves none running
      gate.dispose();
      await upstream.shutdown();
    },
  };
}

/**
 * A first swap, to sglang, once vllm has been quiet for the window used before any swap was
 * timed: from then on sglang's swap cost (swapMs) sets its quiet window and its floor.
 */
async function firstSwapToSglang(s: ReturnType<typeof scheduler>, clock: { now: number }) {
  const first = s.ask("sglang");
  await s.held(1);
  clock.now = QUIET_MAX_MS;
  s.od.schedule();
  await within(first, "the swap to sglang");
}

Deno.test("on demand: an engine with nothing to do goes after a quarter of the last swap's time, long before its residency", async () => {
  const clock = { now: 0 };
  const s = scheduler(60_000, 2000, clock);
  try {
    assertEquals(s.od.quietMs(), QUIET_MAX_MS, "before any swap was timed");
    await s.ask("vllm");
    const first = s.ask("sglang");
    await s.held(1);
    clock.now = QUIET_MAX_MS - 1;
    s.od.schedule();
    assertDeep(s.swaps, [], "swapped before vllm had been quiet for the window");
    clock.now = QUIET_MAX_MS;
    s.od.schedule();
    await within(first, "the swap to sglang");
    assertDeep(s.swaps, ["sglang"]);
    // That swap took 2 s on lychd's clock: the window is a quarter of it now.
    assertEquals(s.od.quietMs(), 500);
    // sglang's request runs until 2 s after the swap: quiet counts from its end, not its start.
    const t = clock.now;
    const long = s.ask("sglang", true);
    await s.parked(1);
    const back = s.ask("vllm");
    await s.held(1);
    clock.now = t + 2000;
    s.finish();
    await within(long, "sglang's request");
    await s.idle();
    clock.now = t + 2000 + s.od.quietMs() - 1;
    s.od.schedule();
    assertDeep(s.swaps, ["sglang"], "swapped before sglang had been quiet since its last answer");
    clock.now = t + 2000 + s.od.quietMs();
    s.od.schedule();
    await within(back, "the swap back to vllm, long before its 60 s residency");
    assertDeep(s.swaps, ["sglang", "vllm"]);
  } finally {
    await s.close();
  }
});

Deno.test("on demand: the quiet window shrinks with the requests waiting for another engine (1/n, n at most 4)", async () => {
  const clock = { now: 0 };
  const s = scheduler(60_000, 2000, clock);
  try {
    await firstSwapToSglang(s, clock);
    // sglang's swap took 2 s: one request waiting for another engine waits out 500 ms of quiet.
    assertEquals(s.od.quietMs("sglang", 1), 500);
    assertEquals(s.od.quietMs("sglang", 2), 250);
    // However many wait, a client of the engine that serves keeps it with gaps under 125 ms.
    assertEquals(s.od.quietMs("sglang", 1000), 500 / QUIET_DIVISOR_MAX);
    // sglang has served as long as its swap took: only the quiet window is left.
    clock.now += 2000;
    const t = clock.now;
    await s.ask("sglang");
    await s.idle();
    const back = [s.ask("vllm"), s.ask("vllm"), s.ask("vllm"), s.ask("vllm")];
    await s.held(4);
    // Quiet since its last request at t: four waiting, a quarter of the window (125 ms) is enough.
    clock.now = t + 124;
    s.od.schedule();
    assertDeep(s.swaps, ["sglang"], "swapped before 1/4 of the window");
    clock.now = t + 125;
    s.od.schedule();
    await within(Promise.all(back), "the swap back to vllm");
    assertDeep(s.swaps, ["sglang", "vllm"]);
  } finally {
    await s.close();
  }
});

Deno.test("on demand: an idle engine is not given away before it has served as long as the swap to it took (clients that pause cannot thrash it)", async () => {
  const clock = { now: 0 };
  const s = scheduler(60_000, 2000, clock);
  try {
    await firstSwapToSglang(s, clock);
    await s.idle();
    const t = clock.now;
    // A client that asks for vllm while sglang's client pauses longer than the quiet window.
    const other = s.ask("vllm");
    await s.held(1);
    for (const at of [s.od.quietMs(), 1000, 1999]) {
      clock.now = t + at;
      s.od.schedule();
      assertDeep(s.swaps, ["sglang"], `given away ${at} ms after a swap that took 2000 ms`);
    }
    clock.now = t + 2000;
    s.od.schedule();
    await within(other, "the swap to vllm once sglang has served as long as its swap took");
    assertDeep(s.swaps, ["sglang", "vllm"]);
  } finally {
    await s.close();
  }
});

Deno.test("on demand: an engine that keeps getting requests stays its residency, then goes (the swap-rate bound)", async () => {
  const clock = { now: 0 };
  const s = scheduler(1000, 1000, clock);
  try {
    // One swap first, so the quiet window is the short one (250 ms).
    await firstSwapToSglang(s, clock);
    const since = clock.now;
    const other = s.ask("vllm");
    await s.held(1);
    // A request for sglang every 200 ms (inside the quiet window), each one answered at once:
    // between them nothing is in flight, yet sglang is not idle.
    for (let t = since; t < since + 1000; t += 200) {
      clock.now = t;
      await s.ask("sglang");
      await s.idle();
      s.od.schedule();
      assertDeep(s.swaps, ["sglang"], `swapped ${t - since} ms into sglang's residency`);
    }
    // One request in flight holds it for the rest of the residency, however long it has been.
    const long = s.ask("sglang", true);
    await s.parked(1);
    clock.now = since + 999;
    s.od.schedule();
    assertDeep(s.swaps, ["sglang"], "swapped while sglang was busy, before its residency");
    clock.now = since + 1000;
    s.od.schedule();
    await waitUntil(() => s.swaps.length === 2, "the swap once the residency is over");
    assertDeep(s.swaps, ["sglang", "vllm"]);
    s.finish();
    await within(long, "sglang's request, drained");
    await within(other, "vllm's request");
  } finally {
    await s.close();
  }
});

Deno.test("on demand: the oldest held request picks the next engine, and every request held for it goes with it (A A B B)", async () => {
  const clock = { now: 0 };
  const s = scheduler(1000, 1000, clock);
  try {
    // vllm is busy (one request in flight): the others are held in this order.
    const busy = s.ask("vllm", true);
    await s.parked(1);
    const held = [s.ask("sglang")];
    await s.held(1);
    held.push(s.ask("llama"));
    await s.held(2);
    held.push(s.ask("llama"));
    await s.held(3);
    held.push(s.ask("sglang"));
    await s.held(4);
    held.push(s.ask("llama"));
    await s.held(5);
    // The gate's metrics say who waits for which engine (the vessel's "On demand" row).
    const m = s.gate.metrics();
    for (const [engine, n] of [["sglang", 2], ["llama", 3], ["", 0]] as const) {
      assertMatch(m, new RegExp(`\nlychd_gate_requests_held\\{engine="${engine}"\\} ${n}\n`));
    }
    clock.now = 1000;
    s.od.schedule();
    // sglang first: its request came first, though more wait for llama (no starvation).
    await waitUntil(() => s.swaps.length === 1, "the first swap");
    assertDeep(s.swaps, ["sglang"]);
    s.finish();
    await within(busy, "vllm's request");
    await within(Promise.all([held[0], held[3]]), "both sglang requests");
    // Both sglang requests ran before anything for llama, and before the next swap.
    assertDeep(s.served, ["vllm", "sglang", "sglang"]);
    await s.idle();
    clock.now += 1000; // sglang has served as long as its swap took (and been quiet)
    s.od.schedule();
    await within(Promise.all(held), "the llama requests");
    assertDeep(s.swaps, ["sglang", "llama"]);
    assertDeep(s.served, ["vllm", "sglang", "sglang", "llama", "llama", "llama"]);
    assertMatch(s.gate.metrics(), /\nlychd_gate_hold_wait_seconds_count\{engine="llama"\} 3\n/);
    assertMatch(s.gate.metrics(), /\nlychd_gate_requests_held\{engine="llama"\} 0\n/);
  } finally {
    await s.close();
  }
});

Deno.test("on demand: the body's top-level `stream` is read as JSON.parse reads it (nested ones do not count, the last one does)", () => {
  const cases: [string, boolean][] = [
    ['{"model":"m","stream":true}', true],
    ['{"stream" :  true, "model":"m"}', true],
    ['{"model":"m","stream":false}', false],
    ['{"model":"m"}', false],
    ['{"messages":[{"stream":true}],"model":"m","options":{"stream":true}}', false],
    ['{"stream":"true","model":"m"}', false],
    ['{"stream":true,"stream":false}', false],
    ['{"stream":true,"stream":null}', false],
    ['{"stream":true,"stream":0}', false],
    ['{"stream":true,"stream":{}}', false],
    ['{"stream":true,"stream":"yes"}', false],
    ['{"stream":false,"stream":true}', true],
  ];
  for (const [body, expected] of cases) {
    const scanner = new ModelScanner();
    scanner.feed(new TextEncoder().encode(body));
    assertEquals(scanner.streams(), expected, body);
    assertEquals(JSON.parse(body).stream === true, expected, `the case itself: ${body}`);
  }
});
