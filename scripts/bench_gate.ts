/**
 * The gate's proxy core (lib/gate/proxy.ts) against its peers, in the same run, over real loopback HTTP,
 * with one small Deno server playing the engine behind every contender:
 *   - direct: the engine itself;
 *   - gate: lib/gate/proxy.ts in a process of its own, as `lychd gate` serves it;
 *   - floor: the plainest Deno proxy (fetch the engine, return its answer; no header filtering, no
 *     counts, no retry, a one-promise hold): what Deno's HTTP server and fetch cost by themselves;
 *   - Go: net/http/httputil's ReverseProxy as llama-swap builds it (scripts/bench/goproxy/main.go:
 *     the default transport, 2 idle connections per host), and the same with 256 (needs `go`,
 *     Debian's golang-go; built into a temporary folder);
 *   - nginx: 1 worker, keepalive upstream, proxy_buffering off (needs Debian's nginx).
 * A contender whose tool is missing is skipped with a message.
 *
 * The load comes from outside every contender: `wrk -t1` (Debian's wrk) POSTing a small chat
 * request over keep-alive at concurrency 1, 16 and 64 (p50, p99, requests/s; at 64 also each
 * contender's CPU time per request and its RSS right after, from /proc). SSE is timed by a
 * raw-socket client in this process (HTTP/1.1 written by hand, chunked encoding decoded
 * minimally): the time to the first event (the client leaves after it, as a client that got what
 * it wanted does), and the rate of a 20,000-event stream faster than any engine. In each repeat,
 * each measure runs over every contender back to back, in an order rotated per repeat (so direct
 * and each peer run close together in time); the summary is median [min...max] over the repeats,
 * of the figure added over direct in the same repeat where that applies.
 *
 * Goals for the gate (issue 22): added p50 and p99 no worse than the Go proxy as llama-swap
 * configures it, at every concurrency; CPU per request at most 1.4x the floor's; the first SSE
 * byte within +1 ms of direct. The fast stream's rate is reported as it is.
 * Not a test: figures for the README and docs/development.md.
 *
 *   deno task bench:gate [SECONDS_PER_LEVEL] [REPEATS]   (defaults: 3 and 5)
 */
import { Gate } from "../lib/gate/proxy.ts";

const STREAM_EVENTS = 20_000;
const EVENT = new TextEncoder().encode('data: {"choices":[{"delta":{"content":"tok"}}]}\n\n');
const DONE = new TextEncoder().encode("data: [DONE]\n\n");
const STREAM_BYTES = STREAM_EVENTS * EVENT.length + DONE.length;
const CHAT_BODY = JSON.stringify({
  model: "bench",
  messages: [{ role: "user", content: "Say hi." }],
  max_tokens: 8,
});
/** First-byte samples, and fast streams, per contender and repeat. */
const FIRST_SAMPLES = 100;
const STREAMS = 3;

const role = Deno.args[0];
/** V8 flags for the gate's process only (an experiment: LYCHD_BENCH_GATE_V8_FLAGS=--max-semi-space-size=2). */
const GATE_V8_FLAGS = role === undefined || !isNaN(Number(role))
  ? Deno.env.get("LYCHD_BENCH_GATE_V8_FLAGS") ?? ""
  : "";

function runEngine() {
  const engine = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen({ port }) {
      console.log(port);
    },
  }, async (req) => {
    const path = new URL(req.url).pathname;
    await req.arrayBuffer();
    if (path === "/stream") {
      let sent = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            // A fast engine: 64 events per pull, until the stream's end.
            for (let i = 0; i < 64 && sent < STREAM_EVENTS; i++, sent++) c.enqueue(EVENT);
            if (sent >= STREAM_EVENTS) {
              c.enqueue(DONE);
              c.close();
            }
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    if (path === "/first") {
      // The first event comes at once, then the stream waits: time to the first byte. A client
      // that leaves after the first event cancels the stream; its timer must not close it then
      // (close() on a cancelled stream throws, and that killed the engine).
      let timer: ReturnType<typeof setTimeout> | undefined;
      return new Response(
        new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(EVENT);
            timer = setTimeout(() => {
              c.enqueue(DONE);
              c.close();
            }, 50);
          },
          cancel() {
            clearTimeout(timer);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    return Response.json({
      id: "chatcmpl-bench",
      object: "chat.completion",
      model: "bench",
      choices: [{
        index: 0,
        message: { role: "assistant", content: "Hi." },
        finish_reason: "stop",
      }],
      usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
    });
  });
  return engine.finished;
}

/**
 * A Deno proxy's process prints "PORT CONTROL_PORT"; the control port closes (/close) or opens
 * (/open) the proxy and answers how many it holds.
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
    return Response.json({ held: control.held() });
  });
  return front.finished;
}

/** The gate in a process of its own. */
function runGate(upstream: string) {
  const gate = new Gate(upstream, { holdTimeoutMs: 60_000, maxHeld: 1024 });
  const front = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (r, info) => gate.handle(r, { completed: info.completed }),
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

// ---------------------------------------------------------------------------------------------
// The contenders

interface Contender {
  name: string;
  port: number;
  child: Deno.ChildProcess;
  /** Close and open a Deno proxy's hold (the gate and the floor). */
  control?: (path: string) => Promise<{ held: number }>;
}

/** The first line `child` prints on stdout. */
async function firstLine(child: Deno.ChildProcess): Promise<string> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("exited before it listened");
    text += value;
  }
  reader.releaseLock();
  return text.split("\n")[0].trim();
}

/** `deno run` of this script in `args`' role. */
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
  return { child, line: await firstLine(child) };
}

async function spawnDenoProxy(role: "gate" | "floor", upstream: string): Promise<Contender> {
  const { child, line } = await spawnRole([role, upstream]);
  const [port, controlPort] = line.split(" ").map(Number);
  return {
    name: role,
    port,
    child,
    control: (path) => fetch(`http://127.0.0.1:${controlPort}${path}`).then((r) => r.json()),
  };
}

/** Run a program to its end; null when it is not installed. */
async function run(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<Deno.CommandOutput | null> {
  try {
    return await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** The Go proxy built into `tmp` (null, with a message, when Go is not installed). */
async function buildGoProxy(tmp: string): Promise<string | null> {
  const source = new URL("./bench/goproxy/main.go", import.meta.url).pathname;
  const binary = `${tmp}/goproxy`;
  const out = await run("go", ["build", "-o", binary, source], {
    // The standard library only: no module download, no cache outside the temporary folder.
    GOFLAGS: "-mod=mod",
    GOPROXY: "off",
    GOCACHE: `${tmp}/gocache`,
    GOPATH: `${tmp}/gopath`,
  });
  if (out === null) {
    console.log("skipped: the Go proxies (no `go`; apt-get install golang-go)");
    return null;
  }
  if (!out.success) {
    console.log(
      `skipped: the Go proxies (go build failed: ${new TextDecoder().decode(out.stderr)})`,
    );
    return null;
  }
  return binary;
}

async function spawnGoProxy(
  name: string,
  binary: string,
  upstream: string,
  idle: number,
): Promise<Contender> {
  const child = new Deno.Command(binary, {
    args: ["-upstream", upstream, "-idle", String(idle)],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  return { name, port: Number(await firstLine(child)), child };
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** nginx with a generated configuration in `tmp`, in the foreground (null when not installed). */
async function spawnNginx(tmp: string, enginePort: number): Promise<Contender | null> {
  let nginx: string | null = null;
  for (const candidate of ["nginx", "/usr/sbin/nginx"]) {
    if ((await run(candidate, ["-v"])) !== null) {
      nginx = candidate;
      break;
    }
  }
  if (nginx === null) {
    console.log("skipped: nginx (not installed; apt-get install nginx)");
    return null;
  }
  const port = freePort();
  const conf = `${tmp}/nginx.conf`;
  await Deno.writeTextFile(
    conf,
    `worker_processes 1;
pid ${tmp}/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${tmp}/nginx-body;
  proxy_temp_path ${tmp}/nginx-proxy;
  fastcgi_temp_path ${tmp}/nginx-fastcgi;
  uwsgi_temp_path ${tmp}/nginx-uwsgi;
  scgi_temp_path ${tmp}/nginx-scgi;
  upstream engine {
    server 127.0.0.1:${enginePort};
    keepalive 256;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`,
  );
  const child = new Deno.Command(nginx, {
    args: ["-e", "stderr", "-p", tmp, "-c", conf, "-g", "daemon off;"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return { name: "nginx", port, child };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  child.kill();
  await child.status;
  console.log("skipped: nginx (it did not listen)");
  return null;
}

// ---------------------------------------------------------------------------------------------
// What the kernel says of a process (and its children: nginx's worker). Deno grants /proc only
// with --allow-all, so it is read through `cat`.

let clockTicks = 100;

async function cat(glob: string): Promise<string> {
  const out = await run("sh", ["-c", `cat ${glob} 2>/dev/null`]);
  return new TextDecoder().decode(out!.stdout);
}

/** `pid` and its descendants, and the CPU time they have used. */
async function tree(pid: number): Promise<{ pids: number[]; cpuSeconds: number }> {
  const stats = new Map<number, { ppid: number; cpuTicks: number }>();
  for (const stat of (await cat("/proc/[0-9]*/stat")).split("\n")) {
    if (!stat) continue;
    // After the command name in parentheses: state, ppid, ... utime (14th), stime (15th).
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    stats.set(parseInt(stat), { ppid: Number(f[1]), cpuTicks: Number(f[11]) + Number(f[12]) });
  }
  const pids = [pid];
  for (let i = 0; i < pids.length; i++) {
    for (const [p, s] of stats) if (s.ppid === pids[i]) pids.push(p);
  }
  const ticks = pids.reduce((sum, p) => sum + (stats.get(p)?.cpuTicks ?? 0), 0);
  return { pids, cpuSeconds: ticks / clockTicks };
}

/** The resident memory of `pid` and its descendants. */
async function rssMB(pid: number): Promise<number> {
  const { pids } = await tree(pid);
  const status = await cat(pids.map((p) => `/proc/${p}/status`).join(" "));
  let kB = 0;
  for (const m of status.matchAll(/VmRSS:\s+(\d+)/g)) kB += Number(m[1]);
  return kB / 1024;
}

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

// ---------------------------------------------------------------------------------------------
// The clients

interface Load {
  p50: number;
  p99: number;
  rps: number;
  requests: number;
}

/** wrk's `done` prints what it measured on one line (latency in microseconds). */
const WRK_SCRIPT = `wrk.method = "POST"
wrk.body = '${CHAT_BODY}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LYCHD %d %d %f %f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
`;

async function wrk(script: string, port: number, c: number, seconds: number): Promise<Load> {
  const out = await run("wrk", [
    "-t1",
    `-c${c}`,
    `-d${seconds}s`,
    "--timeout",
    "10s",
    "-s",
    script,
    `http://127.0.0.1:${port}/v1/chat/completions`,
  ]);
  const text = new TextDecoder().decode(out!.stdout);
  const line = text.split("\n").find((l) => l.startsWith("LYCHD "));
  if (!out!.success || !line) throw new Error(`wrk failed: ${text}`);
  const [requests, durationUs, p50, p99, errors] = line.split(" ").slice(1).map(Number);
  if (errors > 0) throw new Error(`wrk: ${errors} errors at concurrency ${c} on port ${port}`);
  return { p50: p50 / 1000, p99: p99 / 1000, rps: requests / (durationUs / 1e6), requests };
}

const HEADER_END = new Uint8Array([13, 10, 13, 10]);

function indexOf(buf: Uint8Array, n: number, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= n; i++) {
    for (let j = 0; j < needle.length; j++) if (buf[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * One SSE request over a raw socket: HTTP/1.1 written by hand, the answer's chunked encoding
 * decoded just enough to count the body's bytes and chunks. With `firstOnly` it leaves after the
 * first body byte. Times in ms from the request's write.
 */
async function sse(port: number, path: string, firstOnly: boolean) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const request = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
    `Content-Type: application/json\r\nAccept: text/event-stream\r\n` +
    `Content-Length: ${CHAT_BODY.length}\r\nConnection: close\r\n\r\n${CHAT_BODY}`;
  const buf = new Uint8Array(256 * 1024);
  let t0 = 0;
  let first = NaN;
  let bytes = 0;
  let chunks = 0;
  let tail = new Uint8Array(0);
  try {
    t0 = performance.now();
    await conn.write(new TextEncoder().encode(request));
    // Headers first (they may share a read with the body's beginning).
    let have = 0;
    let headerEnd = -1;
    while (headerEnd < 0) {
      const n = await conn.read(buf.subarray(have));
      if (n === null) throw new Error("closed before its headers");
      have += n;
      headerEnd = indexOf(buf, have, HEADER_END);
    }
    const head = new TextDecoder().decode(buf.subarray(0, headerEnd)).toLowerCase();
    if (!head.startsWith("http/1.1 200")) throw new Error(`answered ${head.split("\r\n")[0]}`);
    const chunked = /\r\ntransfer-encoding:\s*chunked/.test(head);
    const length = Number(/\r\ncontent-length:\s*(\d+)/.exec(head)?.[1] ?? -1);
    // Chunked decoding: SIZE (hex digits, extensions to LF), DATA (size bytes), CRLF after it.
    let state: "size" | "ext" | "data" | "crlf" = "size";
    let size = 0;
    let remaining = 0;
    let skip = 0;
    let done = false;
    const body = (b: Uint8Array) => {
      if (b.length === 0) return;
      if (Number.isNaN(first)) first = performance.now() - t0;
      bytes += b.length;
      tail = b.length >= DONE.length ? b.slice(-DONE.length) : concat(tail, b).slice(-DONE.length);
    };
    const consume = (data: Uint8Array) => {
      if (!chunked) {
        body(data);
        if (length >= 0 && bytes >= length) done = true;
        return;
      }
      let i = 0;
      while (i < data.length && !done) {
        if (state === "data") {
          const k = Math.min(remaining, data.length - i);
          body(data.subarray(i, i + k));
          i += k;
          remaining -= k;
          if (remaining === 0) {
            state = "crlf";
            skip = 2;
          }
        } else if (state === "crlf") {
          const k = Math.min(skip, data.length - i);
          i += k;
          skip -= k;
          if (skip === 0) state = "size";
        } else {
          const ch = data[i++];
          if (ch === 10) {
            if (size === 0) done = true; // the last chunk (its trailers are not waited for)
            else {
              chunks++;
              remaining = size;
              state = "data";
            }
            size = 0;
          } else if (state === "size") {
            const d = ch <= 57 ? ch - 48 : (ch | 32) - 87;
            if (d >= 0 && d < 16) size = size * 16 + d;
            else state = "ext"; // ';' extensions or the CR before LF
          }
        }
      }
    };
    consume(buf.subarray(headerEnd + 4, have));
    while (!done && !(firstOnly && bytes > 0)) {
      const n = await conn.read(buf);
      if (n === null) break;
      consume(buf.subarray(0, n));
    }
    return {
      first,
      total: performance.now() - t0,
      bytes,
      chunks: chunked ? chunks : NaN,
      ended: new TextDecoder().decode(tail) === new TextDecoder().decode(DONE),
    };
  } finally {
    conn.close();
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// One repeat of one contender

interface Figures {
  lat: Record<number, Load>;
  cpuUsPerRequest: number;
  rssMB: number;
  heldRssMB?: number;
  firstMs: number;
  streamRate: number;
  streamChunks: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** The short requests at concurrency `n`; at 64 also CPU per request, RSS, and RSS with 256 held. */
async function measureLoad(c: Contender, script: string, seconds: number, n: number, f: Figures) {
  const before = (await tree(c.child.pid)).cpuSeconds;
  f.lat[n] = await wrk(script, c.port, n, seconds);
  if (n !== 64) return;
  const after = (await tree(c.child.pid)).cpuSeconds;
  f.cpuUsPerRequest = (after - before) / f.lat[n].requests * 1e6;
  f.rssMB = await rssMB(c.child.pid);
  if (c.control) {
    // 256 requests held (as through a swap), right after the load.
    await c.control("/close");
    const held = Array.from(
      { length: 256 },
      () =>
        fetch(`http://127.0.0.1:${c.port}/v1/chat/completions`, { method: "POST", body: CHAT_BODY })
          .then((r) => r.arrayBuffer()),
    );
    while ((await c.control("/")).held < 256) await new Promise((r) => setTimeout(r, 10));
    f.heldRssMB = await rssMB(c.child.pid);
    await c.control("/open");
    await Promise.all(held);
  }
}

/** The first SSE byte (p50 of FIRST_SAMPLES), and the fast stream (median of STREAMS). */
async function measureSse(c: Contender, f: Figures) {
  const firsts: number[] = [];
  for (let i = 0; i < FIRST_SAMPLES; i++) {
    const r = await sse(c.port, "/first", true);
    if (!(r.bytes > 0)) throw new Error(`${c.name}: /first gave no event`);
    firsts.push(r.first);
  }
  const rates: number[] = [];
  const chunks: number[] = [];
  for (let i = 0; i < STREAMS; i++) {
    const r = await sse(c.port, "/stream", false);
    if (r.bytes !== STREAM_BYTES || !r.ended) {
      throw new Error(`${c.name}: stream cut (${r.bytes} of ${STREAM_BYTES} bytes)`);
    }
    rates.push(STREAM_EVENTS / (r.total / 1000));
    chunks.push(r.chunks);
  }
  f.firstMs = median(firsts);
  f.streamRate = median(rates);
  f.streamChunks = median(chunks);
}

// ---------------------------------------------------------------------------------------------

const LABELS: Record<string, string> = {
  direct: "direct (the engine)",
  gate: "lychd gate",
  floor: "plainest Deno proxy",
  "go": "Go ReverseProxy, as llama-swap",
  "go-256": "Go, 256 idle conns per host",
  nginx: "nginx, 1 worker",
};

async function runBench(seconds: number, repeats: number) {
  if (!(seconds > 0) || !(repeats >= 1)) throw new Error("usage: [SECONDS_PER_LEVEL] [REPEATS]");
  const ticks = await run("getconf", ["CLK_TCK"]);
  if (ticks?.success) clockTicks = Number(new TextDecoder().decode(ticks.stdout).trim()) || 100;
  if ((await run("wrk", ["-v"])) === null) {
    console.log("wrk is needed for the load (apt-get install wrk); nothing measured");
    Deno.exitCode = 2;
    return;
  }
  const tmp = await Deno.makeTempDir({ dir: "/tmp", prefix: "lychd-bench-gate-" });
  const script = `${tmp}/chat.lua`;
  await Deno.writeTextFile(script, WRK_SCRIPT);
  const contenders: Contender[] = [];
  try {
    const engine = await spawnRole(["engine"]);
    const upstream = `http://127.0.0.1:${engine.line}`;
    contenders.push({ name: "direct", port: Number(engine.line), child: engine.child });
    contenders.push(await spawnDenoProxy("gate", upstream));
    contenders.push(await spawnDenoProxy("floor", upstream));
    const go = await buildGoProxy(tmp);
    if (go) {
      contenders.push(await spawnGoProxy("go", go, upstream, 0));
      contenders.push(await spawnGoProxy("go-256", go, upstream, 256));
    }
    const nginx = await spawnNginx(tmp, Number(engine.line));
    if (nginx) contenders.push(nginx);

    const started = loadAverage();
    console.log(
      `${contenders.length} contenders, ${repeats} repeats, ${seconds} s per level; ` +
        `load average ${started} (1, 5, 15 min)`,
    );
    // Warm up every path (JIT, connections to the engine).
    for (const c of contenders) {
      await wrk(script, c.port, 16, 1);
      await sse(c.port, "/stream", false);
      for (let i = 0; i < 10; i++) await sse(c.port, "/first", true);
    }

    const results: Record<string, Figures[]> = {};
    for (let r = 0; r < repeats; r++) {
      const order = contenders.map((_, i) => contenders[(i + r) % contenders.length]);
      console.log(
        `repeat ${r + 1}: ${order.map((c) => c.name).join(", ")} (load average ${loadAverage()})`,
      );
      // One measure at a time over every contender, so that direct and each peer run close
      // together in time: the load of others on this machine comes and goes.
      const figures = new Map<Contender, Figures>(
        order.map((c) => [c, { lat: {} } as Figures]),
      );
      for (const n of [1, 16, 64]) {
        for (const c of order) await measureLoad(c, script, seconds, n, figures.get(c)!);
      }
      for (const c of order) await measureSse(c, figures.get(c)!);
      for (const c of order) {
        const f = figures.get(c)!;
        (results[c.name] ??= []).push(f);
        console.log(
          `  ${c.name.padEnd(6)} ` +
            [1, 16, 64].map((n) =>
              `c${n} p50 ${f.lat[n].p50.toFixed(2)} p99 ${f.lat[n].p99.toFixed(2)} ms ` +
              `${f.lat[n].rps.toFixed(0)}/s`
            ).join(" | ") +
            ` | CPU ${f.cpuUsPerRequest.toFixed(0)} us/req, RSS ${f.rssMB.toFixed(1)} MB` +
            (f.heldRssMB === undefined ? "" : ` (256 held ${f.heldRssMB.toFixed(1)} MB)`) +
            ` | first byte ${f.firstMs.toFixed(2)} ms | stream ${f.streamRate.toFixed(0)} ` +
            `events/s in ${f.streamChunks} chunks`,
        );
      }
    }
    const ended = loadAverage();
    report(results, contenders.map((c) => c.name), repeats, seconds, started, ended);
  } finally {
    for (const c of contenders) {
      try {
        c.child.kill();
      } catch { /* already gone */ }
      await c.child.status;
    }
    await Deno.remove(tmp, { recursive: true });
  }
}

function report(
  results: Record<string, Figures[]>,
  names: string[],
  repeats: number,
  seconds: number,
  started: string,
  ended: string,
) {
  const direct = results.direct;
  /** median [min...max] over the repeats of `f`, per contender. */
  const spread = (name: string, f: (x: Figures, d: Figures) => number) => {
    const xs = results[name].map((x, i) => f(x, direct[i]));
    return { med: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
  };
  const cell = (s: { med: number; min: number; max: number }, fmt: (x: number) => string) =>
    repeats === 1 ? fmt(s.med) : `${fmt(s.med)} [${fmt(s.min)}...${fmt(s.max)}]`;
  const signed = (digits: number) => (x: number) => `${x < 0 ? "" : "+"}${x.toFixed(digits)}`;
  const plain = (digits: number) => (x: number) =>
    x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

  type Row = [string, (name: string) => string];
  const latencyRows: Row[] = [1, 16, 64].flatMap((c) =>
    (["p50", "p99"] as const).map((p): Row => [
      `c=${c} ${p} (ms)`,
      (n) =>
        n === "direct"
          ? cell(spread(n, (x) => x.lat[c][p]), plain(2))
          : cell(spread(n, (x, d) => x.lat[c][p] - d.lat[c][p]), signed(2)),
    ])
  );
  const rows: Row[] = [
    ...latencyRows,
    ["requests/s, c=64", (n) => cell(spread(n, (x) => x.lat[64].rps), plain(0))],
    ["CPU per request, c=64 (us)", (n) => cell(spread(n, (x) => x.cpuUsPerRequest), plain(0))],
    ["RSS right after c=64 (MB)", (n) => cell(spread(n, (x) => x.rssMB), plain(0))],
    [
      "first SSE byte, p50 (ms)",
      (n) =>
        n === "direct"
          ? cell(spread(n, (x) => x.firstMs), plain(2))
          : cell(spread(n, (x, d) => x.firstMs - d.firstMs), signed(2)),
    ],
    [
      "fast stream (20,000 events)",
      (n) =>
        n === "direct"
          ? `${cell(spread(n, (x) => x.streamRate), plain(0))} events/s`
          : `${cell(spread(n, (x, d) => 100 * x.streamRate / d.streamRate), plain(0))} %`,
    ],
    ["HTTP chunks of that stream", (n) => cell(spread(n, (x) => x.streamChunks), plain(0))],
  ];
  console.log(
    `\nadded over direct in the same repeat, median [min...max] of ${repeats} repeats of ` +
      `${seconds} s per level; load average ${started} at the start, ${ended} at the end\n`,
  );
  console.log(`| measure | ${names.map((n) => LABELS[n]).join(" | ")} |`);
  console.log(`| --- | ${names.map(() => "---").join(" | ")} |`);
  for (const [label, f] of rows) console.log(`| ${label} | ${names.map(f).join(" | ")} |`);
  for (const n of ["gate", "floor"]) {
    const held = spread(n, (x) => x.heldRssMB!);
    console.log(
      `${LABELS[n]}: RSS with 256 requests held, right after c=64: ${cell(held, plain(0))} MB`,
    );
  }

  // The goals (issue 22), on the medians.
  const m = (n: string, f: (x: Figures, d: Figures) => number) => spread(n, f).med;
  const goals: [string, boolean | null][] = [];
  if (results.go) {
    for (const c of [1, 16, 64]) {
      for (const p of ["p50", "p99"] as const) {
        const added = (n: string) => m(n, (x, d) => x.lat[c][p] - d.lat[c][p]);
        goals.push([
          `added ${p} at c=${c} no worse than the Go proxy's (${signed(2)(added("gate"))} vs ${
            signed(2)(added("go"))
          } ms)`,
          added("gate") <= added("go"),
        ]);
      }
    }
  } else goals.push(["added p50 and p99 no worse than the Go proxy's", null]);
  const cpu = (n: string) => m(n, (x) => x.cpuUsPerRequest);
  goals.push([
    `CPU per request at most 1.4x the plainest Deno proxy's (${
      (cpu("gate") / cpu("floor")).toFixed(2)
    }x)`,
    cpu("gate") <= 1.4 * cpu("floor"),
  ]);
  const first = m("gate", (x, d) => x.firstMs - d.firstMs);
  goals.push([`first SSE byte within +1 ms of direct (${signed(2)(first)} ms)`, first <= 1]);
  console.log("\ngoals for the gate (medians):");
  for (const [text, met] of goals) {
    console.log(`  ${met === null ? "not measured" : met ? "met" : "MISSED"}: ${text}`);
  }
  console.log(
    `  reported as it is: the fast stream at ${
      m("gate", (x, d) => 100 * x.streamRate / d.streamRate).toFixed(0)
    } % of direct's rate`,
  );
  Deno.exitCode = goals.every(([, met]) => met !== false) ? 0 : 1;
}

// Last, so that every declaration above is initialized when the role runs.
if (role === "engine") await runEngine();
else if (role === "gate") await runGate(Deno.args[1]);
else if (role === "floor") await runFloor(Deno.args[1]);
else await runBench(Number(Deno.args[0] ?? 3), Number(Deno.args[1] ?? 5));
