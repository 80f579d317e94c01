/**
 * A stand-in inference engine for the systemd-sandbox tests, run in a container built by
 * `sdsandbox image`. It takes the command line lychd gives the real engine and behaves like
 * one: it listens on the `--port` it is given, answers /health 503 "Loading model" until it
 * has "loaded" (llama.cpp's sequence), then 200, lists its model in /v1/models, answers
 * /v1/completions with a tiny completion (lychd's warm-up) and serves a small /metrics. /whoami says which port (hence which engine) answered.
 *
 * Test switches (appended through the cartridge's `args` in lychd.yaml):
 *   --fake-load-ms N        time from start to ready (default 1000)
 *   --fake-never-ready      stay at 503 forever
 *   --fake-ignore-sigterm   keep running on SIGTERM, like llama.cpp with clients connected
 *   --fake-completions-fail healthy and listing its model, but every completion is a 500
 * Sleep (vLLM's routes, docs/engines.md "Sleep and wake"), only when started as vLLM offers them:
 * with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1. POST /sleep?level=1|2, POST /wake_up
 * [?tags=weights|kv_cache], GET /is_sleeping, POST /collective_rpc {"method":"reload_weights"},
 * POST /reset_prefix_cache. Asleep it still answers /health and /v1/models (as vLLM does); a
 * chat or completion is refused with a 500 unless a hazard below says otherwise; after level 2
 * the weights must be reloaded, or a completion is a 500 ("weights not reloaded").
 *   --fake-sleep-ms N       how long /sleep takes (default 100)
 *   --fake-wake-ms N        how long /wake_up takes (default 300)
 *   --fake-hang-asleep      a request while asleep hangs (vllm #45268): 30 s, then a 500
 *   --fake-crash-on-busy-sleep  /sleep with a request in flight answers 200, then the engine
 *                           exits 1 (vllm #45520)
 *   --fake-crash-on-sleep   /sleep answers 200, then the engine exits 1
 * SGLang's memory saver, only with --enable-memory-saver: POST /release_memory_occupation (all
 * tags: asleep) and POST /resume_memory_occupation (awake; the weights valid only with
 * --enable-weights-cpu-backup, as SGLang restores them from that host copy). No route says
 * whether it is released, as in SGLang.
 *   --fake-refuse-busy-release  /release_memory_occupation with a request in flight answers a
 *                           500 (SGLang's scheduler asserts that it is idle)
 * /whoami also says whether its compile cache (VLLM_CACHE_ROOT, SGLANG_JIT_CACHE_ROOT or
 * CUDA_CACHE_PATH, as lychd sets them) held what an earlier start wrote: cache=hit|miss|none.
 */
const args = Deno.args;
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(flag("--port") ?? 8080);
// vLLM: the model is the first word; SGLang: --model-path; llama.cpp: --alias.
const model = flag("--alias") ?? flag("--model-path") ??
  (args[0]?.startsWith("-") ? "unknown" : args[0]);
const loadMs = Number(flag("--fake-load-ms") ?? 1000);
const neverReady = args.includes("--fake-never-ready");
const started = Date.now();
let requests = 0;
/** Chat and completion requests being answered now. */
let inFlight = 0;

// Sleep, as vLLM offers it: only in development mode, only with --enable-sleep-mode.
const canSleep = args.includes("--enable-sleep-mode") &&
  Deno.env.get("VLLM_SERVER_DEV_MODE") === "1";
const sleepMs = Number(flag("--fake-sleep-ms") ?? 100);
const wakeMs = Number(flag("--fake-wake-ms") ?? 300);
let weightsOn = true;
let kvOn = true;
let weightsValid = true;
const asleep = () => !weightsOn || !kvOn;
// SGLang's memory saver (its own flags: no development mode).
const canRelease = args.includes("--enable-memory-saver");
const cpuBackup = args.includes("--enable-weights-cpu-backup");

async function releaseRoute(req: Request, path: string): Promise<Response> {
  if (req.method !== "POST") return new Response("not found\n", { status: 404 });
  if (path === "/release_memory_occupation") {
    if (args.includes("--fake-refuse-busy-release") && inFlight > 0) {
      console.log(`release refused: ${inFlight} in flight`);
      return Response.json({ error: "fake: the scheduler is not idle" }, { status: 500 });
    }
    await pause(sleepMs);
    weightsOn = false;
    kvOn = false;
    console.log("memory released");
    return Response.json({ success: true });
  }
  await pause(wakeMs);
  weightsOn = true;
  kvOn = true;
  weightsValid = cpuBackup;
  console.log(`memory resumed${cpuBackup ? "" : " (no CPU backup: weights lost)"}`);
  return Response.json({ success: true });
}
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A chat or completion request that arrives while asleep: refused, or one of vLLM's hazards. */
async function whileAsleep(req: Request): Promise<Response> {
  console.log(`request while asleep: ${new URL(req.url).pathname}`);
  if (args.includes("--fake-hang-asleep")) {
    // Bounded, so that a test sees a failure rather than hanging itself.
    await new Promise<void>((r) => {
      const t = setTimeout(r, 30_000);
      req.signal.addEventListener("abort", () => (clearTimeout(t), r()));
    });
    return Response.json({ error: { code: 500, message: "fake: hung asleep" } }, { status: 500 });
  }
  return Response.json({ error: { code: 500, message: "fake: asleep" } }, { status: 500 });
}

async function sleepRoute(req: Request, path: string): Promise<Response> {
  const url = new URL(req.url);
  switch (`${req.method} ${path}`) {
    case "POST /sleep": {
      const level = Number(url.searchParams.get("level") ?? "1");
      const crash = args.includes("--fake-crash-on-sleep") ||
        (args.includes("--fake-crash-on-busy-sleep") && inFlight > 0);
      if (crash) {
        console.log(`crash on /sleep (${inFlight} in flight)`);
        setTimeout(() => Deno.exit(1), 50);
        return new Response(null, { status: 200 });
      }
      await pause(sleepMs);
      weightsOn = false;
      kvOn = false;
      if (level === 2) weightsValid = false;
      console.log(`asleep, level ${level}`);
      return new Response(null, { status: 200 });
    }
    case "POST /wake_up": {
      const tags = url.searchParams.getAll("tags");
      await pause(wakeMs);
      if (tags.length === 0 || tags.includes("weights")) weightsOn = true;
      if (tags.length === 0 || tags.includes("kv_cache")) kvOn = true;
      console.log(`wake_up ${tags.join(",") || "all"}: ${asleep() ? "still asleep" : "awake"}`);
      return new Response(null, { status: 200 });
    }
    case "GET /is_sleeping":
      return Response.json({ is_sleeping: asleep() });
    case "POST /collective_rpc": {
      const body = await req.json().catch(() => ({}));
      if (body.method === "reload_weights" && weightsOn) weightsValid = true;
      return Response.json({ results: [null] });
    }
    case "POST /reset_prefix_cache":
      return new Response(null, { status: 200 });
  }
  return new Response("not found\n", { status: 404 });
}

// Like a real engine's compile cache: the first start "compiles" into the folder lychd points
// it to, a later start finds it there (cache=hit), even though its container was removed.
const cacheDir = Deno.env.get("VLLM_CACHE_ROOT") ?? Deno.env.get("SGLANG_JIT_CACHE_ROOT") ??
  Deno.env.get("CUDA_CACHE_PATH");
let cache = "none";
if (cacheDir) {
  const artefact = `${cacheDir}/fake-compiled.bin`;
  try {
    await Deno.stat(artefact);
    cache = "hit";
  } catch {
    await Deno.mkdir(cacheDir, { recursive: true });
    await Deno.writeFile(artefact, new Uint8Array(64 * 1024));
    cache = "miss";
  }
}

Deno.addSignalListener("SIGTERM", () => {
  if (args.includes("--fake-ignore-sigterm")) {
    console.log("SIGTERM ignored: clients still connected");
    return;
  }
  console.log("SIGTERM: exiting");
  Deno.exit(0);
});

/** A few series in the dialect of the engine this port belongs to, so the harvester labels them. */
function metrics(): string {
  const m = `model_name="${model}"`;
  switch (port) {
    case 8000:
      return `# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{${m}} 1\n` +
        `# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{${m}} ${
          requests * 10
        }\n`;
    case 30000:
      return `# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{${m}} 1\n` +
        `# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total{${m}} ${
          requests * 10
        }\n`;
    case 8080:
      return `# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n` +
        `# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total ${
          requests * 10
        }\n`;
    default:
      return `# TYPE fake_requests_total counter\nfake_requests_total ${requests}\n`;
  }
}

const TOKENS = 6;
const TOKEN_MS = 50;

async function chat(req: Request): Promise<Response> {
  const body = await req.json().catch(() => ({}));
  const base = { id: `chatcmpl-${port}`, model, system_fingerprint: `port=${port}` };
  // In flight from here until its last token (or its client leaving).
  inFlight++;
  if (!body.stream) {
    await new Promise((r) => setTimeout(r, TOKENS * TOKEN_MS)).finally(() => inFlight--);
    return Response.json({
      ...base,
      object: "chat.completion",
      choices: [{
        index: 0,
        message: { role: "assistant", content: "fake ".repeat(TOKENS) },
        finish_reason: "stop",
      }],
    });
  }
  const e = new TextEncoder();
  return new Response(
    new ReadableStream<Uint8Array>({
      async start(c) {
        try {
          await tokens(c);
        } catch {
          /* the client left */
        } finally {
          inFlight--;
        }
      },
    }),
    { headers: { "content-type": "text/event-stream" } },
  );

  async function tokens(c: ReadableStreamDefaultController<Uint8Array>) {
    for (let i = 0; i < TOKENS; i++) {
      const chunk = {
        ...base,
        object: "chat.completion.chunk",
        choices: [{ index: 0, delta: { content: "fake " } }],
      };
      c.enqueue(e.encode(`data: ${JSON.stringify(chunk)}\n\n`));
      await new Promise((r) => setTimeout(r, TOKEN_MS));
    }
    c.enqueue(e.encode("data: [DONE]\n\n"));
    c.close();
  }
}

console.log(
  `fake engine: port ${port}, model ${model}, ready after ${neverReady ? "never" : `${loadMs} ms`}`,
);
Deno.serve({ hostname: "0.0.0.0", port, onListen() {} }, (req) => {
  const path = new URL(req.url).pathname;
  const ready = !neverReady && Date.now() - started >= loadMs;
  const sleepPaths = [
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/collective_rpc",
    "/reset_prefix_cache",
  ];
  if (canSleep && sleepPaths.includes(path)) return sleepRoute(req, path);
  const releasePaths = ["/release_memory_occupation", "/resume_memory_occupation"];
  if (canRelease && releasePaths.includes(path)) return releaseRoute(req, path);
  const generates = path === "/v1/completions" || path === "/v1/chat/completions";
  if (generates && asleep()) return whileAsleep(req);
  if (generates && !weightsValid) {
    return Response.json({ error: { code: 500, message: "fake: weights not reloaded" } }, {
      status: 500,
    });
  }
  switch (path) {
    case "/health":
      return ready ? Response.json({ status: "ok" }) : Response.json({
        error: { code: 503, message: "Loading model", type: "unavailable_error" },
      }, {
        status: 503,
      });
    case "/v1/models":
      return Response.json({
        object: "list",
        data: [{ id: model, object: "model", owned_by: "fake" }],
      });
    case "/argv":
      // The exact words the engine was started with, after Quadlet, systemd and Podman.
      return Response.json(args);
    case "/v1/completions":
      // lychd's warm-up (and any client): a tiny completion once "loaded".
      if (args.includes("--fake-completions-fail")) {
        return Response.json({ error: { code: 500, message: "fake: out of memory" } }, {
          status: 500,
        });
      }
      return ready
        ? Response.json({
          object: "text_completion",
          model,
          choices: [{ index: 0, text: " fake" }],
        })
        : Response.json({ error: { code: 503, message: "Loading model" } }, { status: 503 });
    case "/v1/chat/completions":
      // A client's chat request (the gate's load test): a few tokens over ~300 ms, streamed as
      // SSE chunks or answered at once. `system_fingerprint` says which engine answered.
      if (!ready) {
        return Response.json({ error: { code: 503, message: "Loading model" } }, { status: 503 });
      }
      return chat(req);
    case "/whoami":
      // ready_at: when /health turned 200, in ms since the epoch (for scripts/bench_swap.ts).
      return new Response(
        `port=${port} model=${model} ready_at=${neverReady ? "never" : started + loadMs} ` +
          `cache=${cache}\n`,
      );
    case "/metrics":
      requests++;
      return new Response(metrics(), { headers: { "content-type": "text/plain; version=0.0.4" } });
    default:
      return new Response("not found\n", { status: 404 });
  }
});
