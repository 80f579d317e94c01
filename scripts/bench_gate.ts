/**
 * The gate's proxy core (lib/gate.ts) against the engine directly, in the same run, over real
 * loopback HTTP, with a small Deno server playing the engine. Engine, gate and clients are three
 * processes (as on a host), so none of them steals the others' event loop:
 *   - added latency of a short request, p50 and p99, at concurrency 1, 16 and 64
 *     (goal: p50 <= 1 ms, p99 <= 5 ms added);
 *   - time to the first SSE byte (goal: within 2 ms of direct);
 *   - relayed throughput of a fast stream (goal: >= 95 % of direct);
 *   - the process's RSS with 256 requests held, right after a load (goal: < 64 MB).
 * The same figures for the plainest Deno proxy (fetch the engine, return its answer; "floor"),
 * in a process of its own: what Deno's HTTP server and fetch cost without any of the gate's work,
 * so the gate's own share can be told from the runtime's on this machine.
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
else if (role === "floor") await runFloor(Deno.args[1]);
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
      // The first token comes at once, then the stream waits: time to first byte. A client that
      // leaves before the end cancels the stream; its timer must not close it then (close() on a
      // cancelled stream throws, and that killed the engine).
      let timer: ReturnType<typeof setTimeout> | undefined;
      return new Response(
        new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(CHUNK);
            timer = setTimeout(() => c.close(), 50);
          },
          cancel() {
            clearTimeout(timer);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    return Response.json({ object: "list", data: [{ id: "bench" }] });
  });
  return engine.finished;
}

/**
 * A proxy's process prints "PORT CONTROL_PORT"; the control port closes (/close) or opens (/open)
 * the proxy and answers how many it holds and the process's RSS.
 */
function serveControl(
  front: Deno.HttpServer<Deno.NetAddr>,
  control: { close(): void; open(): void; held(): number },
) {
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen({ port }) {
      console.log(`${front.addr.port} ${port}`);
    },
  }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/close") control.close();
    if (path === "/open") control.open();
    return Response.json({ held: control.held(), rssMB: Deno.memoryUsage().rss / 1024 / 1024 });
  });
  return front.finished;
}

/** The gate in a process of its own. */
function runGate(upstream: string) {
  const gate = new Gate(upstream, { holdTimeoutMs: 60_000, maxHeld: 1024 });
  const front = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (r, info) => gate.handle(r, info.completed),
  );
  return serveControl(front, {
    close: () => gate.close(),
    open: () => gate.open(upstream),
    held: () => gate.counts().held,
  });
}

/**
 * The floor: a proxy with nothing of the gate's (no headers filtered, no counts, no retry), and a
 * hold as plain as can be (one promise).
 */
function runFloor(upstream: string) {
  let opened: Promise<void> | null = null;
  let open = () => {};
  let held = 0;
  const front = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      if (opened) {
        held++;
        await opened;
        held--;
      }
      const url = new URL(req.url);
      return await fetch(`${upstream}${url.pathname}${url.search}`, {
        method: req.method,
        headers: req.headers,
        body: req.body,
        signal: req.signal,
      });
    },
  );
  return serveControl(front, {
    close: () => opened = new Promise((r) => open = r),
    open: () => {
      open();
      opened = null;
    },
    held: () => held,
  });
}

/** Start `deno run` of this script in `args`' role; resolves with the first line it prints. */
async function spawnRole(args: string[]): Promise<{ child: Deno.ChildProcess; line: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...(args[0] === "gate" && GATE_V8_FLAGS ? [`--v8-flags=${GATE_V8_FLAGS}`] : []),
      // As lychd runs (deno.json "unstable"), wherever this is started from.
      "--unstable-no-legacy-abort",
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

interface Proxy {
  url: string;
  control(path: string): Promise<{ held: number; rssMB: number }>;
  child: Deno.ChildProcess;
}

async function spawnProxy(role: "gate" | "floor", upstream: string): Promise<Proxy> {
  const { child, line } = await spawnRole([role, upstream]);
  const [port, controlPort] = line.split(" ");
  return {
    url: `http://127.0.0.1:${port}`,
    control: (path) => fetch(`http://127.0.0.1:${controlPort}${path}`).then((r) => r.json()),
    child,
  };
}

async function runClient(N: number) {
  const engineProc = await spawnRole(["engine"]);
  const direct = `http://127.0.0.1:${engineProc.line}`;
  const gate = await spawnProxy("gate", direct);
  const floor = await spawnProxy("floor", direct);

  const pct = (xs: number[], p: number) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(s.length * p))];
  };
  const ms = (x: number) => x.toFixed(2);

  /** Latencies of N short requests at `concurrency`, and the requests per second they made. */
  async function latencies(base: string, concurrency: number) {
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
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    return { p50: pct(out, 0.5), p99: pct(out, 0.99), rps: N / ((performance.now() - t0) / 1000) };
  }

  async function firstByte(base: string): Promise<number> {
    const out: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      const r = await fetch(`${base}/first`);
      const reader = r.body!.getReader();
      await reader.read();
      out.push(performance.now() - t0);
      while (!(await reader.read()).done) { /* drain */ }
    }
    return pct(out, 0.5);
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

  /** The proxy process's RSS before and with 256 requests held. */
  async function heldRss(p: Proxy): Promise<{ idle: number; held: number }> {
    const idle = (await p.control("/")).rssMB;
    await p.control("/close");
    const held = Array.from(
      { length: 256 },
      () => fetch(`${p.url}/v1/models`).then((r) => r.text()),
    );
    while ((await p.control("/")).held < 256) await new Promise((r) => setTimeout(r, 10));
    const rss = (await p.control("/")).rssMB;
    await p.control("/open");
    await Promise.all(held);
    return { idle, held: rss };
  }

  // Warm all paths up.
  for (const base of [direct, gate.url, floor.url]) await latencies(base, 4);

  const rows: string[] = [];
  let ok = true;
  for (const c of [1, 16, 64]) {
    // Interleaved, so that drift of the machine hits every path.
    const d = await latencies(direct, c);
    const g = await latencies(gate.url, c);
    const f = await latencies(floor.url, c);
    ok &&= g.p50 - d.p50 <= 1 && g.p99 - d.p99 <= 5;
    const line = (name: string, x: typeof d) =>
      `${name} p50 ${ms(x.p50)} p99 ${ms(x.p99)} ms (${x.rps.toFixed(0)}/s)`;
    rows.push(
      `concurrency ${String(c).padStart(2)}: ${line("direct", d)}; ${line("gate", g)}, added ` +
        `p50 ${ms(g.p50 - d.p50)} p99 ${ms(g.p99 - d.p99)} ms; ${line("floor", f)}, added ` +
        `p50 ${ms(f.p50 - d.p50)} p99 ${ms(f.p99 - d.p99)} ms`,
    );
  }
  const [fd, fg, ff] = [
    await firstByte(direct),
    await firstByte(gate.url),
    await firstByte(floor.url),
  ];
  ok &&= fg - fd <= 2;
  rows.push(
    `first SSE byte p50: direct ${ms(fd)} ms, gate ${ms(fg)} ms (+${ms(fg - fd)}), floor ${
      ms(ff)
    } ms (+${ms(ff - fd)})`,
  );
  const [td, tg, tf] = [
    await throughput(direct),
    await throughput(gate.url),
    await throughput(floor.url),
  ];
  ok &&= tg >= 0.95 * td;
  const pc = (x: number) => `${(100 * x / td).toFixed(1)} %`;
  rows.push(
    `fast stream: direct ${td.toFixed(0)} chunks/s, gate ${tg.toFixed(0)} (${pc(tg)}), floor ${
      tf.toFixed(0)
    } (${pc(tf)})`,
  );

  // 256 requests held right after a load: the worst case (idle for a second or two, V8 gives much
  // of its young generation back and the figure drops by half, so this is measured hot).
  await latencies(gate.url, 64);
  const rg = await heldRss(gate);
  await latencies(floor.url, 64);
  const rf = await heldRss(floor);
  ok &&= rg.held < 64;
  rows.push(
    `RSS with 256 requests held right after ${N} at concurrency 64: gate ${
      rg.held.toFixed(1)
    } MB (before holding ${rg.idle.toFixed(1)}), floor ${rf.held.toFixed(1)} MB (before holding ${
      rf.idle.toFixed(1)
    })`,
  );

  for (const r of rows) console.log(r);
  console.log(ok ? "all goals met" : "a goal was missed (see above)");
  for (const child of [engineProc.child, gate.child, floor.child]) {
    child.kill();
    await child.status;
  }
  Deno.exitCode = ok ? 0 : 1;
}
