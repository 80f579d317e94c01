/**
 * Real engine output through lychd's harvester config and recording rules, on a REAL Prometheus:
 * each capture in tests/fixtures/captures/ (verbatim from real vLLM and SGLang servers) is
 * served as an engine's /metrics. For each: every series of the capture is stored (none merged
 * or dropped by lychd's relabelling), the engine's own labels are intact, and exactly the
 * expected `lychd:` series are recorded (absent where the capture has no source metric).
 */
import type { Override } from "../lib/config/yaml.ts";
import { assertDeep, assertEquals } from "./support/assert.ts";
import { evolve } from "./support/metrics_fixtures.ts";
import { writePrometheusFiles } from "./support/prom.ts";
import { type PrometheusServer, startPrometheus } from "./support/prometheus_server.ts";
import { requireTools } from "./support/tools.ts";
import { planFor } from "./support/units.ts";

const ignore = requireTools("prometheus", "promtool");
const FAST: Override[] = [{ path: ["harvester", "scrape_interval"], value: "1s", flag: "test" }];
const CAPTURES = new URL("./fixtures/captures/", import.meta.url);
const METRICS = new URL("./fixtures/metrics/", import.meta.url);

interface Case {
  name: string;
  file: URL;
  engine: "vllm" | "sglang";
  /** The lychd: series this capture must give, and no others. */
  recorded: string[];
  /** Label sets that must survive (the engine's own labels). */
  labels?: Record<string, string>;
  /** Expected values of some lychd: series. */
  values?: Record<string, number>;
}

const CASES: Case[] = [
  {
    name: "vLLM early V1 (no engine label, the old KV-cache name)",
    file: new URL("vllm-v1-2025-03-prodstack318/metrics.txt", CAPTURES),
    engine: "vllm",
    recorded: ["lychd:kv_cache_usage_ratio", "lychd:requests_running", "lychd:requests_waiting"],
  },
  {
    name: "vLLM early V1, request_prompt_tokens histogram excerpt",
    file: new URL("vllm-v1-2025-03-prodstack318/metrics-part2.txt", CAPTURES),
    engine: "vllm",
    recorded: [],
  },
  {
    name: 'vLLM 0.10.0 (engine="0", _created gauges, deprecated and new prefix-cache names)',
    file: new URL("vllm-0.10.0-prodstack617/metrics.txt", CAPTURES),
    engine: "vllm",
    recorded: ["lychd:kv_cache_usage_ratio", "lychd:prefix_cache_hit_ratio:rate1m"],
    labels: { engine: "0", model_name: "zai-org/GLM-4.5" },
    values: { "lychd:prefix_cache_hit_ratio:rate1m": 0 },
  },
  {
    name: "vLLM 0.10.0, request_generation_tokens histogram excerpt",
    file: new URL("vllm-0.10.0-prodstack617/metrics-part2.txt", CAPTURES),
    engine: "vllm",
    recorded: [],
  },
  {
    name: 'vLLM data parallel 2: histograms of engine "0" and "1"',
    file: new URL("vllm-dp2-2025-08-pr22227/metrics.txt", CAPTURES),
    engine: "vllm",
    recorded: [],
    labels: { engine: "1" },
  },
  {
    name: "vLLM data parallel 2: e2e latency buckets",
    file: new URL("vllm-dp2-2025-08-pr22227/metrics-part2.txt", CAPTURES),
    engine: "vllm",
    // Buckets only (an excerpt: no +Inf, no _count): the quantile rule still records its series,
    // with no usable value (histogram_quantile without a +Inf bucket is NaN, per Prometheus' docs).
    recorded: ["lychd:e2e_request_latency_seconds:p95_1m"],
  },
  {
    name: "vLLM data parallel 2: gauges of both cores (derived) are summed, not merged",
    file: new URL("vllm-dp2-gauges.prom", METRICS),
    engine: "vllm",
    recorded: ["lychd:requests_running", "lychd:requests_waiting"],
    labels: { engine: "1" },
    values: { "lychd:requests_running": 5, "lychd:requests_waiting": 5 },
  },
  {
    name: "SGLang ~0.4.0 docs block (_sum before the buckets, float artefacts in le)",
    file: new URL("sglang-2024-12-docs-production-metrics/metrics.txt", CAPTURES),
    engine: "sglang",
    recorded: [
      "lychd:e2e_request_latency_seconds:avg_1m",
      "lychd:e2e_request_latency_seconds:p95_1m",
      "lychd:generation_tokens:rate1m",
      "lychd:inter_token_latency_seconds:avg_1m",
      "lychd:inter_token_latency_seconds:p95_1m",
      "lychd:kv_cache_usage_ratio",
      "lychd:prompt_tokens:rate1m",
      "lychd:requests_running",
      "lychd:requests_waiting",
      "lychd:time_to_first_token_seconds:avg_1m",
      "lychd:time_to_first_token_seconds:p95_1m",
    ],
  },
  {
    name: "SGLang ~0.4.4 (engine_type label)",
    file: new URL("sglang-0.4.4-pr4412/metrics.txt", CAPTURES),
    engine: "sglang",
    recorded: ["lychd:kv_cache_usage_ratio", "lychd:requests_running"],
    labels: { engine_type: "unified" },
  },
  {
    name: "SGLang 0.5.1 (tp_rank, pp_rank labels)",
    file: new URL("sglang-0.5.1-issue13485/metrics.txt", CAPTURES),
    engine: "sglang",
    recorded: ["lychd:kv_cache_usage_ratio", "lychd:requests_running"],
    labels: { tp_rank: "0", pp_rank: "0" },
  },
];

/** name{labels} of every sample line: what Prometheus must store. */
function seriesOf(text: string): string[] {
  return text.split("\n").filter((l) => l && !l.startsWith("#"))
    .map((l) => l.replace(/\s+\S+$/, ""))
    .map((s) => {
      const m = s.match(/^([^{]+)(?:\{(.*)\})?$/)!;
      const labels = (m[2] ?? "").match(/[a-zA-Z_]+="(?:[^"\\]|\\.)*"/g) ?? [];
      return `${m[1]}{${labels.sort().join(",")}}`;
    }).sort();
}

function key(metric: Record<string, string>, drop: string[]): string {
  const labels = Object.entries(metric).filter(([k]) => k !== "__name__" && !drop.includes(k))
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`).sort();
  return `${metric.__name__}{${labels.join(",")}}`;
}

async function withCapture(
  body: (scrape: number) => Response,
  fn: (prom: PrometheusServer) => Promise<void>,
) {
  let scrapes = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/metrics") return new Response("", { status: 404 });
    return body(++scrapes);
  });
  const dir = await Deno.makeTempDir({ prefix: "lychd-real-" });
  let prom: PrometheusServer | null = null;
  try {
    // The engine's job is the same in both layouts but for its port; without the gate, no
    // target is down (the gate's job is scraped in observability_test.ts).
    const config = await writePrometheusFiles(planFor("gate: false\n", FAST), dir, {
      engine: `127.0.0.1:${server.addr.port}`,
    });
    prom = await startPrometheus(config);
    await fn(prom);
  } finally {
    await prom?.stop();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Poll `check` until it returns null (done) or the deadline passes; the last complaint. */
async function eventually(
  check: () => Promise<string | null>,
  seconds = 60,
): Promise<string | null> {
  const deadline = Date.now() + seconds * 1000;
  let last: string | null = "never checked";
  while (Date.now() < deadline) {
    last = await check();
    if (last === null) return null;
    await new Promise((r) => setTimeout(r, 500));
  }
  return last;
}

for (const c of CASES) {
  Deno.test({
    name: `real metrics (real Prometheus): ${c.name}`,
    ignore,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const text = await Deno.readTextFile(c.file);
      const expectedSeries = seriesOf(text);
      await withCapture(
        (n) =>
          new Response(evolve(text, n) + "\n", {
            headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
          }),
        async (prom) => {
          const problem = await eventually(async () => {
            // Rules over rates need two scrapes and an evaluation after them: judge what is
            // recorded only then (earlier, a rate-based series is absent by chance, not by rule).
            const evaluated = await prom.query("count_over_time(lychd:engine_serving[1m]) >= 3");
            if (evaluated.length === 0) return "the rules have not run over three scrapes yet";
            // Every series of the capture, with the engine's own labels, plus lychd's own label.
            const stored = await prom.query(`{__name__=~"${c.engine}:.*"}`);
            for (const s of stored) {
              if (s.metric.lychd_engine !== (c.engine === "vllm" ? "vllm" : "sglang")) {
                return `lychd_engine is ${s.metric.lychd_engine} on ${key(s.metric, [])}`;
              }
            }
            const got = stored.map((s) => key(s.metric, ["job", "instance", "lychd_engine"]))
              .sort();
            const want = expectedSeries.filter((s) => s.startsWith(`${c.engine}:`))
              .map((s) =>
                s.replace(
                  /([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g,
                  (_, k, v) => `${k}=${JSON.stringify(v)}`,
                )
              );
            if (JSON.stringify(got) !== JSON.stringify(want)) {
              return `stored ${got.length} series, the capture has ${want.length}:\n` +
                `  missing: ${want.filter((w) => !got.includes(w)).slice(0, 5).join("\n  ")}`;
            }
            const recorded = [
              ...new Set(
                (await prom.query('{__name__=~"lychd:.+", __name__!="lychd:engine_serving"}'))
                  .map((s) => s.metric.__name__),
              ),
            ].sort();
            if (JSON.stringify(recorded) !== JSON.stringify(c.recorded)) {
              return `recorded ${recorded.join(", ") || "nothing"}`;
            }
            for (const [name, value] of Object.entries(c.values ?? {})) {
              const r = await prom.query(name);
              if (r.length !== 1 || Number(r[0].value[1]) !== value) {
                return `${name} is ${
                  r.map((s) => s.value[1]).join(", ") || "absent"
                }, not ${value}`;
              }
            }
            const serving = await prom.query("lychd:engine_serving");
            if (JSON.stringify(serving.map((s) => s.metric.lychd_engine)) !== `["${c.engine}"]`) {
              return `lychd:engine_serving is ${JSON.stringify(serving.map((s) => s.metric))}`;
            }
            return null;
          });
          assertEquals(problem, null, c.name);
          for (const [label, value] of Object.entries(c.labels ?? {})) {
            const r = await prom.query(`{__name__=~"${c.engine}:.*", ${label}="${value}"}`);
            assertEquals(r.length > 0, true, `no series keeps ${label}="${value}"`);
          }
        },
      );
    },
  });
}

Deno.test({
  name:
    "real metrics (real Prometheus): vLLM's empty 200 /metrics body records nothing, fails nothing",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    // The real response: status and headers verbatim, and no body.
    const raw = await Deno.readTextFile(
      new URL("vllm-2024-09-issue8612-empty-metrics/metrics-response.http", CAPTURES),
    );
    const headers = new Headers();
    for (const line of raw.split("\n").slice(1)) {
      const m = line.match(/^([^:]+):\s*(.*)$/);
      if (m && !/^(date|transfer-encoding|server)$/i.test(m[1])) headers.set(m[1], m[2]);
    }
    assertEquals(raw.split("\n")[0].trim(), "HTTP/1.1 200 OK");
    await withCapture(() => new Response("", { status: 200, headers }), async (prom) => {
      const problem = await eventually(async () => {
        const up = await prom.query('up{job="soulstone"}');
        return up.length === 1 && up[0].value[1] === "1" ? null : `up is ${JSON.stringify(up)}`;
      });
      assertEquals(problem, null);
      assertDeep(await prom.query('scrape_samples_scraped{job="soulstone"} > 0'), []);
      assertDeep(await prom.query('{__name__=~"lychd:.+"}'), []);
    });
  },
});
