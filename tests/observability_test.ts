/**
 * The dashboards and recording rules against a REAL Prometheus (Debian's package) scraping a
 * small server that plays each engine's /metrics (tests/fixtures/metrics/; llama.cpp's is a
 * real capture). For each engine: every query of its own dashboard returns data, every overview
 * query returns data exactly where the engine can support it (never faked), and no other
 * engine's dashboard shows anything. Then a swap: the overview shows both periods and which
 * engine served when.
 */
import type { Override } from "../lib/config/yaml.ts";
import { assert, assertDeep, assertEquals } from "./support/assert.ts";
import { startMetricsServer } from "./support/metrics_fixtures.ts";
import { writePrometheusFiles } from "./support/prom.ts";
import { type PrometheusServer, startPrometheus } from "./support/prometheus_server.ts";
import { requireTools } from "./support/tools.ts";
import { planFor } from "./support/units.ts";
import { panels, substitute } from "./support/dashboards.ts";
import { Gate } from "../lib/gate/proxy.ts";
import { GATE_METRICS_PATH } from "../lib/units/model.ts";

const ignore = requireTools("prometheus", "promtool");
const ENGINES = ["vllm", "sglang", "llama"] as const;
const FAST: Override[] = [{ path: ["harvester", "scrape_interval"], value: "1s", flag: "test" }];

/** Overview series an engine has no equivalent for: they must stay absent. */
const UNSUPPORTED: Record<string, string[]> = {
  vllm: [],
  sglang: [],
  llama: [
    "lychd:requests:rate1m",
    "lychd:time_to_first_token_seconds:p95_1m",
    "lychd:time_to_first_token_seconds:avg_1m",
    "lychd:inter_token_latency_seconds:p95_1m",
    "lychd:e2e_request_latency_seconds:p95_1m",
    "lychd:e2e_request_latency_seconds:avg_1m",
    "lychd:kv_cache_usage_ratio",
  ],
};

const isGate = (expr: string) => expr.startsWith("lychd:gate_");

function targets(file: string): { panel: string; expr: string }[] {
  return panels(file).flatMap((p) =>
    p.targets!.map((t) => ({ panel: p.title, expr: substitute(t.expr) }))
  );
}

async function hasData(prom: PrometheusServer, expr: string): Promise<boolean> {
  const r = await prom.query(expr);
  return r.some((s) => Number.isFinite(Number(s.value[1])));
}

/** Poll until every expr has data (or the deadline); returns the ones that still have none. */
async function waitForData(
  prom: PrometheusServer,
  exprs: string[],
  seconds = 60,
): Promise<string[]> {
  const deadline = Date.now() + seconds * 1000;
  let missing = exprs;
  while (missing.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    const still: string[] = [];
    for (const e of missing) if (!(await hasData(prom, e))) still.push(e);
    missing = still;
  }
  return missing;
}

/** Poll until `expr` returns a series; fails, naming it, after `seconds`. */
async function waitFor(prom: PrometheusServer, expr: string, seconds = 60): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if ((await prom.query(expr)).length > 0) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`no data for ${expr} after ${seconds} s`);
}

async function withStack(
  engine: string,
  fn: (prom: PrometheusServer, serve: (e: string) => void) => Promise<void>,
) {
  const metrics = await startMetricsServer(engine);
  const dir = await Deno.makeTempDir({ prefix: "lychd-obs-" });
  let prom: PrometheusServer | null = null;
  try {
    // The layout without the gate: the engine's /metrics is all there is (the gate's own panels
    // are the next test's).
    const config = await writePrometheusFiles(planFor("gate: false\n", FAST), dir, {
      engine: `127.0.0.1:${metrics.port}`,
    });
    prom = await startPrometheus(config);
    await fn(prom, (e) => metrics.serve(e));
  } finally {
    await prom?.stop();
    await metrics.close();
    await Deno.remove(dir, { recursive: true });
  }
}

for (const engine of ENGINES) {
  Deno.test({
    name: `observability (real Prometheus): ${engine}'s dashboard, the overview, and no cross-talk`,
    ignore,
    async fn() {
      await withStack(engine, async (prom) => {
        const own = targets(`soulstone-${engine}.json`);
        const missing = await waitForData(prom, own.map((t) => t.expr));
        assertDeep(
          own.filter((t) => missing.includes(t.expr)).map((t) => t.panel),
          [],
          `panels of soulstone-${engine}.json without data`,
        );

        // No gate in this layout (gate: false): its panels must stay empty, never faked.
        const overview = targets("lychd-vessel.json").filter((t) => !isGate(t.expr));
        for (const t of targets("lychd-vessel.json").filter((t) => isGate(t.expr))) {
          assertEquals(await hasData(prom, t.expr), false, `${t.panel} without a gate`);
        }
        const unsupported = (expr: string) => UNSUPPORTED[engine].some((u) => expr === u);
        const expected = overview.filter((t) => !unsupported(t.expr)).map((t) => t.expr);
        const stillMissing = await waitForData(prom, expected);
        assertDeep(stillMissing, [], `overview queries without data for ${engine}`);
        for (const expr of UNSUPPORTED[engine]) {
          assertEquals(await hasData(prom, expr), false, `${expr} must stay absent for ${engine}`);
        }
        for (const t of overview.filter((t) => t.expr.startsWith("lychd:"))) {
          for (const s of await prom.query(t.expr)) {
            assertEquals(s.metric.lychd_engine, engine, t.expr);
          }
        }

        for (const other of ENGINES.filter((e) => e !== engine)) {
          for (const t of targets(`soulstone-${other}.json`)) {
            assertEquals(
              await hasData(prom, t.expr),
              false,
              `${other}'s "${t.panel}" shows ${engine} data`,
            );
          }
        }

        // Figures for the closing note: what the rules cost on a small host.
        const series = await prom.query('count({__name__=~"lychd:.+"})');
        const groups = await prom.rules();
        console.log(
          `  [${engine}] lychd: series recorded: ${series[0]?.value[1] ?? 0}; rule evaluation: ` +
            groups.map((g) => `${g.name} ${(g.evaluationTime * 1000).toFixed(2)} ms`).join(", "),
        );
      });
    },
  });
}

Deno.test({
  name:
    "observability (real Prometheus): after a swap the overview shows both periods and who served when",
  ignore,
  async fn() {
    await withStack("vllm", async (prom, serve) => {
      const t0 = Date.now() / 1000;
      assertDeep(
        await waitForData(prom, [
          'lychd:engine_serving{lychd_engine="vllm"}',
          "lychd:generation_tokens:rate1m",
        ]),
        [],
      );
      // Conditions, not sleeps: a few samples of each period, and the old engine gone.
      await waitFor(prom, 'count_over_time(lychd:engine_serving{lychd_engine="vllm"}[1m]) >= 3');
      const swapAt = Date.now() / 1000;
      serve("llama");
      await waitFor(prom, 'count_over_time(lychd:engine_serving{lychd_engine="llama"}[1m]) >= 3');
      await waitFor(prom, 'absent(lychd:engine_serving{lychd_engine="vllm"})');
      // A rate needs two of llama's samples and a rule evaluation after them, and a range sees a
      // sample only from its first step at or after it: the range ends once llama's token rate
      // is in it, however long that takes (a range ended at a fixed moment missed it in CI).
      const deadline = Date.now() + 60_000;
      let end: number;
      let tokens: Awaited<ReturnType<PrometheusServer["queryRange"]>>;
      for (;;) {
        end = Date.now() / 1000;
        tokens = await prom.queryRange("lychd:generation_tokens:rate1m", t0 - 1, end, 1);
        if (tokens.some((s) => s.metric.lychd_engine === "llama") || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      assertDeep(tokens.map((s) => s.metric.lychd_engine).sort(), ["llama", "vllm"]);

      const serving = await prom.queryRange("lychd:engine_serving", t0 - 1, end, 1);
      assertDeep(serving.map((s) => s.metric.lychd_engine).sort(), ["llama", "vllm"]);
      const span = (e: string) => {
        const values = serving.find((s) => s.metric.lychd_engine === e)!.values.map((v) => v[0]);
        return [Math.min(...values), Math.max(...values)];
      };
      const [, vllmLast] = span("vllm");
      const [llamaFirst, llamaLast] = span("llama");
      // One port, one engine at a time: the periods do not overlap (the scrape that brings
      // llama's series marks vllm's stale), and llama cannot appear before it was switched on.
      assert(
        vllmLast <= llamaFirst,
        `vllm marked serving ${vllmLast - llamaFirst}s into llama's period`,
      );
      assert(llamaFirst >= swapAt - 1, "llama marked serving before the swap");
      assert(llamaLast >= end - 1, "llama not serving at the end");
      // Current state: only llama serves; the generated-token history holds both engines (above).
      assertDeep((await prom.query("lychd:engine_serving")).map((s) => s.metric.lychd_engine), [
        "llama",
      ]);
      const up = await prom.queryRange('up{job="soulstone"}', t0 - 1, end, 1);
      assert(
        up.length === 1 && up[0].values.every((v) => v[1] === "1"),
        `port 8081 was not scraped throughout: ${JSON.stringify(up)}`,
      );
    });
  },
});

Deno.test({
  name:
    "observability (real Prometheus): the vessel's gate panels from a real gate's /lychd/metrics",
  ignore,
  async fn() {
    // A real Gate in front of a small engine: requests served, held across a close/open, one
    // refused, a swap recorded. Its metrics are what `lychd gate` serves on /lychd/metrics.
    const engine = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response("ok"),
    );
    const up = `http://127.0.0.1:${engine.addr.port}`;
    const gate = new Gate(up, { holdTimeoutMs: 300, maxHeld: 4 });
    gate.open(up, "vllm");
    const front = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req, info) =>
        new URL(req.url).pathname === GATE_METRICS_PATH
          ? new Response(gate.metrics())
          : gate.handle(req, { completed: info.completed }),
    );
    const url = `http://127.0.0.1:${front.addr.port}`;
    const metrics = await startMetricsServer("vllm");
    const dir = await Deno.makeTempDir({ prefix: "lychd-obs-gate-" });
    let prom: PrometheusServer | null = null;
    const traffic = setInterval(() => {
      fetch(`${url}/v1/models`).then((r) => r.body?.cancel());
    }, 100);
    try {
      const plan = planFor("gate: true\n", FAST);
      const config = await writePrometheusFiles(plan, dir, {
        engine: `127.0.0.1:${metrics.port}`,
        gate: `127.0.0.1:${front.addr.port}`,
      });
      prom = await startPrometheus(config);
      // The swaps must come after the first scrape: an average of phases needs their increase.
      await waitFor(prom, 'up{job="lychd-gate"} == 1');
      for (let round = 0; round < 3; round++) {
        gate.close();
        const held = fetch(`${url}/v1/models`).then((r) => r.text());
        await new Promise((r) => setTimeout(r, 400 + 100 * round));
        gate.recordSwap({
          from: "vllm",
          to: "llama",
          result: "ok",
          phases: { drain: 0.1, stop: 1.2, start: 0.4, load: 2.5 },
          at: Date.now(),
        });
        gate.open(up, "llama");
        await held;
        await new Promise((r) => setTimeout(r, 1500));
      }
      const gateTargets = targets("lychd-vessel.json").filter((t) => isGate(t.expr));
      assert(gateTargets.length >= 6, "the vessel has no gate panels");
      // The refused panel needs a refusal: held past the hold timeout.
      gate.close();
      assertEquals((await fetch(`${url}/v1/models`)).status, 503);
      gate.open(up, "llama");
      const missing = await waitForData(prom, gateTargets.map((t) => t.expr), 60);
      assertDeep(gateTargets.filter((t) => missing.includes(t.expr)).map((t) => t.panel), []);
      const held = await prom.query("lychd:gate_hold_wait_seconds:p95_5m");
      // Held 0.1-0.6 s each (the traffic came in during the closes): the p95 is well above 0.
      assert(Number(held[0].value[1]) > 0.1, `hold wait p95 ${held[0].value[1]}`);
    } finally {
      clearInterval(traffic);
      await prom?.stop();
      await metrics.close();
      await front.shutdown();
      await engine.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
