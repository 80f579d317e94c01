/**
 * The gate's proxy core (lib/gate.ts) against the engine directly, in the same run, over real
 * loopback HTTP, with a small Deno server playing the engine. Engine, gate and clients are three
 * processes (as on a host), so none of them steals the others' event loop:
 *   - added latency of a short request, p50 and p99, at concurrency 1, 16 and 64
 *     (goal: p50 <= 1 ms, p99 <= 5 ms added);
 *   - time to the first SSE byte (goal: within 2 ms of direct);
 *   - relayed throughput of a fast stream (goal: >= 95 % of direct);
 *   - the process's RSS with 256 requests held (goal: < 64 MB).
 * Not a test: figures for the README and the closing note.
 *
 *   deno task bench:gate [REQUESTS_PER_LEVEL]   (default 2000)
 */
import { Gate } from "../lib/gate.ts";

const STREAM_CHUNKS = 20_000;
const CHUNK = new TextEncoder().encode('data: {"choices":[{"text":"tok"}]}\n\n');

const role = Deno.args[0];
/** V8 flags for the gate's process only (an experiment: LYCHD_BENCH_GATE_V8_FLAGS=--max-semi-space-size=2). */
const GATE_V8_FLAGS = role === undefined || !isNaN(Number(role))
  ? Deno.env.get("LYCHD_BENCH_GATE_V8_FLAGS") ?? ""
  : "";
if (role === "engine") await runEngine();
else if (role === "gate") await runGate(Deno.args[1]);
else await runClient(Number(Deno.args[0] ?? 2000));

function runEngine() {
  const engine = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen({ port }) {
      console.log(port);
    },
  }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/stream") {
      let sent = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            // A fast engine: 64 chunks per pull, until the stream's end.
            for (let i = 0; i < 64 && sent < STREAM_CHUNKS; i++, sent++) c.enqueue(CHUNK);
            if (sent >= STREAM_CHUNKS) c.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    if (path === "/first") {
      // The first token comes at once, then the stream waits: time to first byte.
      return new Response(
        new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(CHUNK);
            setTimeout(() => c.close(), 50);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    return Response.json({ object: "list", data: [{ id: "bench" }] });
  });
  return engine.finished;
}

/** The gate in a process of its own; a second port answers its RSS and closes or opens it. */
function runGate(upstream: string) {
  const gate = new Gate(upstream, { holdTimeoutMs: 60_000, maxHeld: 1024 });
  const front = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (r, info) => gate.handle(r, info.completed),
  );
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen({ port }) {
      console.log(`${front.addr.port} ${port}`);
    },
  }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/close") gate.close();
    if (path === "/open") gate.open(upstream);
    return Response.json({ ...gate.counts(), rssMB: Deno.memoryUsage().rss / 1024 / 1024 });
  });
  return front.finished;
}

/** Start `deno run` of this script in `args`' role; resolves with the first line it prints. */
async function spawnRole(args: string[]): Promise<{ child: Deno.ChildProcess; line: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...(args[0] === "gate" && GATE_V8_FLAGS ? [`--v8-flags=${GATE_V8_FLAGS}`] : []),
      "--allow-net=127.0.0.1",
      "--allow-sys=osRelease",
      import.meta.filename!,
      ...args,
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  return { child, line: value!.trim() };
}

async function runClient(N: number) {
  const engineProc = await spawnRole(["engine"]);
  const direct = `http://127.0.0.1:${engineProc.line}`;
  const gateProc = await spawnRole(["gate", direct]);
  const [gatePort, controlPort] = gateProc.line.split(" ");
  const gated = `http://127.0.0.1:${gatePort}`;
  const control = (path: string) =>
    fetch(`http://127.0.0.1:${controlPort}${path}`).then((r) => r.json());

  const pct = (xs: number[], p: number) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(s.length * p))];
  };

  async function latencies(base: string, concurrency: number): Promise<number[]> {
    const out: number[] = [];
    let next = 0;
    const worker = async () => {
      while (next < N) {
        next++;
        const t0 = performance.now();
        const r = await fetch(`${base}/v1/models`);
        await r.arrayBuffer();
        out.push(performance.now() - t0);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return out;
  }

  async function firstByte(base: string): Promise<number[]> {
    const out: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      const r = await fetch(`${base}/first`);
      const reader = r.body!.getReader();
      await reader.read();
      out.push(performance.now() - t0);
      while (!(await reader.read()).done) { /* drain */ }
    }
    return out;
  }

  async function throughput(base: string): Promise<number> {
    const t0 = performance.now();
    const r = await fetch(`${base}/stream`);
    let bytes = 0;
    for await (const c of r.body!) bytes += c.length;
    const s = (performance.now() - t0) / 1000;
    if (bytes !== STREAM_CHUNKS * CHUNK.length) throw new Error(`stream cut: ${bytes} bytes`);
    return STREAM_CHUNKS / s;
  }

  // Warm both paths up.
  await latencies(direct, 4);
  await latencies(gated, 4);

  const rows: string[] = [];
  let ok = true;
  for (const c of [1, 16, 64]) {
    // Alternate, so that drift of the machine hits both sides.
    const d = await latencies(direct, c);
    const g = await latencies(gated, c);
    const add50 = pct(g, 0.5) - pct(d, 0.5);
    const add99 = pct(g, 0.99) - pct(d, 0.99);
    ok &&= add50 <= 1 && add99 <= 5;
    rows.push(
      `concurrency ${String(c).padStart(2)}: direct p50 ${pct(d, 0.5).toFixed(2)} ms p99 ${
        pct(d, 0.99).toFixed(2)
      } ms; gate p50 ${pct(g, 0.5).toFixed(2)} ms p99 ${pct(g, 0.99).toFixed(2)} ms; added p50 ${
        add50.toFixed(2)
      } ms, p99 ${add99.toFixed(2)} ms`,
    );
  }
  const fd = await firstByte(direct);
  const fg = await firstByte(gated);
  const ttfb = pct(fg, 0.5) - pct(fd, 0.5);
  ok &&= ttfb <= 2;
  rows.push(
    `first SSE byte: direct p50 ${pct(fd, 0.5).toFixed(2)} ms, gate ${
      pct(fg, 0.5).toFixed(2)
    } ms ` +
      `(+${ttfb.toFixed(2)} ms)`,
  );
  const td = await throughput(direct);
  const tg = await throughput(gated);
  ok &&= tg >= 0.95 * td;
  rows.push(
    `fast stream: direct ${td.toFixed(0)} chunks/s, gate ${tg.toFixed(0)} chunks/s (${
      (100 * tg / td).toFixed(1)
    } %)`,
  );

  // 256 requests held while the gate is closed: the gate process's memory.
  const idle = (await control("/")).rssMB as number;
  await control("/close");
  const held = Array.from({ length: 256 }, () => fetch(`${gated}/v1/models`).then((r) => r.text()));
  while ((await control("/")).held < 256) await new Promise((r) => setTimeout(r, 10));
  const rss = (await control("/")).rssMB as number;
  ok &&= rss < 64;
  rows.push(
    `gate RSS with 256 requests held: ${rss.toFixed(1)} MB (after the runs above, before holding: ${
      idle.toFixed(1)
    } MB)`,
  );
  await control("/open");
  await Promise.all(held);

  for (const r of rows) console.log(r);
  console.log(ok ? "all goals met" : "a goal was missed (see above)");
  for (const p of [engineProc, gateProc]) {
    p.child.kill();
    await p.child.status;
  }
  Deno.exitCode = ok ? 0 : 1;
}
