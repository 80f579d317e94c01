/**
 * On demand against llama.cpp's own router, in one run, under real systemd (a sandbox guest, or
 * this host with LYCHD_E2E=host; system mode, needs root). The same mixed load
 * (scripts/on_demand_load.ts: 8 clients, two models, a client keeps its model for 4 requests,
 * max_tokens 16-64, half streaming, fresh connections, no retry) is sent, in each round, to:
 *   limit   one real llama.cpp engine, no model named, no swap (what the hardware allows);
 *   lychd   lychd's gate with `on_demand: true`, two real llama.cpp engines (llama, alpha);
 *   router  `llama-server --models-preset FILE --models-max 1` with the same two models.
 * lychd and the router take turns going first. Prints completed, failed, p50/p99 and swaps per
 * round and in all, each system's ratio to the router and its fraction of the limit.
 *
 * lychd's two engines run on the host's network (`network: host`, docs/engines.md "The engine's
 * network"); `--private` puts them in networks of their own, lychd's default.
 *
 * `--slow`: the second scenario instead: two stand-in engines that take 10 s to load (the fake
 * engine, not a real one), lychd only: completed, failed, swaps, the longest wait.
 *
 *   deno task bench:on-demand [ROUNDS] [SECONDS] [--slow] [--private] [--verbose]   (3 x 40 s)
 */
import {
  buildFakeEngineImage,
  buildLlamaImage,
  buildPrometheusImage,
  DENO,
  LLAMA_DIR,
  openTarget,
  ROOT,
  type Run,
  twoLlamas,
  writeConfig,
} from "../tests/support/target.ts";
import type { LoadResult } from "./on_demand_load.ts";

const args = Deno.args.filter((a) => !a.startsWith("--"));
const SLOW = Deno.args.includes("--slow");
const NETWORK = Deno.args.includes("--private") ? "private" : "host";
/** `--verbose`: each on-demand swap's report, from the gate's journal. */
const VERBOSE = Deno.args.includes("--verbose");
const ROUNDS = Number(args[0] ?? 3);
const SECONDS = Number(args[1] ?? 40);
const CLIENTS = 8;
const MODELS = ["llama", "alpha"];
const MODEL_DIR = "/srv/lychd-models";
const ROUTER_PORT = 28080;
const LOAD_MS = 10_000;

function must(r: Run, what: string): string {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const target = await openTarget("system", ["/var/lib/lychd", "/etc/lychd", MODEL_DIR]);
const guest = target.run;
const lychd = async (...a: string[]) =>
  must(await target.lychd(...a, "--system"), `lychd ${a.join(" ")}`);

async function load(url: string, models: string[]): Promise<LoadResult> {
  const out = must(
    await guest([
      DENO,
      "run",
      "--allow-net=127.0.0.1",
      `${ROOT}/scripts/on_demand_load.ts`,
      url,
      String(SECONDS),
      String(CLIENTS),
      ...models,
    ]),
    "the load",
  );
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

async function swaps(): Promise<number> {
  return JSON.parse(await lychd("status", "--json")).gate.swaps;
}

/** The gate's journal lines about on-demand swaps since `since` (s since the epoch). */
async function swapLines(since: number): Promise<string> {
  const r = await guest([
    "journalctl",
    "-u",
    "lychd-gate.service",
    "--since",
    `@${since}`,
    "-o",
    "short-precise",
    "--no-pager",
  ]);
  return r.stdout.split("\n").filter((l) => /on.demand|ready in|stopped|drain|failed/.test(l))
    .map((l) => `          ${l}`).join("\n");
}

function pct(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;
}

function line(name: string, r: LoadResult, extra = ""): string {
  const failures = Object.entries(r.failures).map(([m, n]) => `${n}x ${m}`).join("; ");
  return `${name.padEnd(7)} ${String(r.completed).padStart(5)} completed, ${r.failed} failed, ` +
    `p50 ${(pct(r.latencies, 0.5) / 1000).toFixed(2)} s, p99 ${
      (pct(r.latencies, 0.99) / 1000).toFixed(2)
    } s${extra}${failures ? `\n          failures: ${failures}` : ""}`;
}

function merge(rs: LoadResult[]): LoadResult {
  return {
    completed: rs.reduce((n, r) => n + r.completed, 0),
    failed: rs.reduce((n, r) => n + r.failed, 0),
    failures: rs.reduce((f, r) => {
      for (const [m, n] of Object.entries(r.failures)) f[m] = (f[m] ?? 0) + n;
      return f;
    }, {} as Record<string, number>),
    latencies: rs.flatMap((r) => r.latencies).sort((a, b) => a - b),
    perSecond: rs.flatMap((r) => r.perSecond),
    unfinished: rs.reduce((n, r) => n + r.unfinished, 0),
  };
}

try {
  const prometheus = await buildPrometheusImage(target);
  must(
    await guest(["cp", `${LLAMA_DIR}/tiny.gguf`, `${MODEL_DIR}/tiny.gguf`]),
    "copying the model",
  );
  if (SLOW) await slowScenario(prometheus);
  else await routerScenario(prometheus);
} finally {
  await target.close();
}

async function routerScenario(prometheus: string) {
  await buildLlamaImage(target);
  // Clients name each engine by its name (tests/support/target.ts: the built-in llama and a
  // custom one, alpha; on the host's network a swap costs less: docs/engines.md).
  console.log(`lychd's engines: network: ${NETWORK}`);
  must(
    await writeConfig(
      target,
      `engines: [llama, alpha]
active: llama
gpu: cpu
model_cache: ${MODEL_DIR}
harvester: {image: ${prometheus}}
gate:
  on_demand: true
  min_residency: 5s
${twoLlamas(NETWORK, MODEL_DIR)}`,
    ),
    "writing lychd.yaml",
  );
  await lychd("init");
  const server = await Deno.realPath(`${LLAMA_DIR}/llama-server`);
  must(
    await guest(
      ["sh", "-c", "cat > /etc/lychd/bench-router.ini"],
      MODELS.map((m) => `[${m}]\nmodel = ${MODEL_DIR}/tiny.gguf\nalias = ${m}\nctx-size = 2048\n`)
        .join("\n"),
    ),
    "writing the router's presets",
  );

  const all: Record<string, LoadResult[]> = { limit: [], lychd: [], router: [] };
  let lychdSwaps = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    console.log(`round ${round}:`);
    await lychd("swap", "llama");
    const limit = await load("http://127.0.0.1:18081/v1/chat/completions", []);
    all.limit.push(limit);
    console.log(`  ${line("limit", limit)}`);
    const order = round % 2 === 1 ? ["lychd", "router"] : ["router", "lychd"];
    for (const system of order) {
      if (system === "lychd") {
        await lychd("swap", "llama");
        const before = await swaps();
        const since = Math.floor(Date.now() / 1000);
        const r = await load("http://127.0.0.1:8081/v1/chat/completions", MODELS);
        const n = (await swaps()) - before;
        // A round with failures shows the gate's own account of its swaps, as --verbose does.
        if (VERBOSE || r.failed > 0) console.log(await swapLines(since));
        lychdSwaps += n;
        all.lychd.push(r);
        console.log(`  ${line("lychd", r, `, ${n} swaps`)}`);
        console.log(`          per second: ${r.perSecond.join(" ")}`);
      } else {
        await lychd("stop");
        must(
          await guest([
            "systemd-run",
            "--unit=lychd-bench-router",
            "--collect",
            server,
            "--models-preset",
            "/etc/lychd/bench-router.ini",
            "--models-max",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            String(ROUTER_PORT),
          ]),
          "starting the router",
        );
        must(
          await guest([
            "curl",
            "-fsS",
            "-o",
            "/dev/null",
            "--retry",
            "60",
            "--retry-all-errors",
            "--retry-delay",
            "1",
            `http://127.0.0.1:${ROUTER_PORT}/models`,
          ]),
          "waiting for the router",
        );
        const r = await load(`http://127.0.0.1:${ROUTER_PORT}/v1/chat/completions`, MODELS);
        all.router.push(r);
        console.log(`  ${line("router", r)}`);
        console.log(`          per second: ${r.perSecond.join(" ")}`);
        must(await guest(["systemctl", "stop", "lychd-bench-router"]), "stopping the router");
      }
    }
    const ratio = all.lychd.at(-1)!.completed / Math.max(1, all.router.at(-1)!.completed);
    console.log(
      `  lychd/router ${ratio.toFixed(2)}x; of the limit: lychd ${
        (all.lychd.at(-1)!.completed / limit.completed).toFixed(2)
      }, router ${(all.router.at(-1)!.completed / limit.completed).toFixed(2)}`,
    );
  }
  const [limit, mine, router] = [merge(all.limit), merge(all.lychd), merge(all.router)];
  console.log(`\nover ${ROUNDS} x ${SECONDS} s, ${CLIENTS} clients:`);
  console.log(`  ${line("limit", limit)}`);
  console.log(`  ${line("lychd", mine, `, ${lychdSwaps} swaps`)}`);
  console.log(`  ${line("router", router)}`);
  const perRound = all.lychd.map((r, i) => (r.completed / all.router[i].completed).toFixed(2));
  console.log(
    `  lychd/router ${(mine.completed / router.completed).toFixed(2)}x (per round ${
      perRound.join(", ")
    }); of the limit: lychd ${(mine.completed / limit.completed).toFixed(2)}, router ${
      (router.completed / limit.completed).toFixed(2)
    }`,
  );
}

/** Engines that load for 10 s (stand-ins): what lychd serves, and how often it swaps. */
async function slowScenario(prometheus: string) {
  const fake = await buildFakeEngineImage(target);
  must(
    await writeConfig(
      target,
      `engines: [vllm, sglang]
active: vllm
gpu: cpu
harvester: {image: ${prometheus}}
gate:
  on_demand: true
  min_residency: 5s
cartridges:
  vllm: {image: ${fake}, model: llama, args: [--fake-load-ms, "${LOAD_MS}"]}
  sglang: {image: ${fake}, model: alpha, args: [--fake-load-ms, "${LOAD_MS}"]}
`,
    ),
    "writing lychd.yaml",
  );
  await lychd("init");
  const all: LoadResult[] = [];
  let total = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    await lychd("swap", "vllm");
    const before = await swaps();
    const r = await load("http://127.0.0.1:8081/v1/chat/completions", MODELS);
    const n = (await swaps()) - before;
    total += n;
    all.push(r);
    console.log(
      `round ${round}: ${
        line(
          "lychd",
          r,
          `, ${n} swaps, longest wait ${((r.latencies.at(-1) ?? 0) / 1000).toFixed(1)} s`,
        )
      }`,
    );
    console.log(`          per second: ${r.perSecond.join(" ")}`);
  }
  const m = merge(all);
  console.log(
    `\nengines loading ${LOAD_MS / 1000} s, over ${ROUNDS} x ${SECONDS} s: ` +
      line(
        "lychd",
        m,
        `, ${total} swaps, longest wait ${((m.latencies.at(-1) ?? 0) / 1000).toFixed(1)} s`,
      ),
  );
}
