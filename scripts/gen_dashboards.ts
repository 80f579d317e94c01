/**
 * Writes dashboards/*.json from the compact panel lists below. The JSON files are committed
 * and embedded into lychd; tests/dashboards_test.ts checks they match this script's output,
 * so edit here and run `deno task dashboards`.
 *
 * Metric names: docs/engines.md and the llama.cpp fixtures captured from a real server.
 */
const DATASOURCE = { type: "prometheus", uid: "lychd-prometheus" };
const RI = "$__rate_interval";

interface PanelSpec {
  title: string;
  unit: string;
  /** [expr, legend] pairs. */
  targets: [string, string][];
  description?: string;
  /** Threshold steps above which the panel turns orange / red. */
  thresholds?: [number, number];
  kind?: "timeseries" | "stat" | "state-timeline";
  max?: number;
}

interface RowSpec {
  title: string;
  panels: PanelSpec[];
}

interface DashboardSpec {
  file: string;
  uid: string;
  title: string;
  description: string;
  /** Model variable: a metric carrying the label `model_name`. */
  modelFrom?: string;
  rows: RowSpec[];
}

function dashboard(spec: DashboardSpec): unknown {
  let id = 0;
  let y = 0;
  const panels: unknown[] = [];
  for (const row of spec.rows) {
    panels.push({
      id: ++id,
      type: "row",
      title: row.title,
      collapsed: false,
      gridPos: { h: 1, w: 24, x: 0, y: y++ },
      panels: [],
    });
    const width = row.panels.length >= 3 ? 8 : 12;
    row.panels.forEach((p, i) => {
      const x = (i * width) % 24;
      if (i > 0 && x === 0) y += 8;
      panels.push(panel(p, ++id, { h: 8, w: width, x, y }));
    });
    y += 8;
  }
  return {
    uid: spec.uid,
    title: spec.title,
    description: spec.description,
    tags: ["lychd"],
    editable: false,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    time: { from: "now-1h", to: "now" },
    refresh: "10s",
    timepicker: {},
    templating: {
      list: spec.modelFrom
        ? [{
          name: "model",
          label: "Model",
          type: "query",
          datasource: DATASOURCE,
          query: { query: `label_values(${spec.modelFrom}, model_name)`, refId: "model" },
          definition: `label_values(${spec.modelFrom}, model_name)`,
          includeAll: true,
          multi: true,
          allValue: ".*",
          current: { selected: true, text: ["All"], value: ["$__all"] },
          refresh: 2,
          sort: 1,
        }]
        : [],
    },
    annotations: { list: [] },
    panels,
  };
}

function panel(p: PanelSpec, id: number, gridPos: unknown): unknown {
  const steps: unknown[] = [{ color: "green", value: null }];
  if (p.thresholds) {
    steps.push({ color: "orange", value: p.thresholds[0] }, {
      color: "red",
      value: p.thresholds[1],
    });
  }
  const kind = p.kind ?? "timeseries";
  return {
    id,
    type: kind,
    title: p.title,
    description: p.description ?? "",
    datasource: DATASOURCE,
    gridPos,
    fieldConfig: {
      defaults: {
        unit: p.unit,
        min: 0,
        ...(p.max !== undefined ? { max: p.max } : {}),
        thresholds: { mode: "absolute", steps },
        ...(kind === "timeseries"
          ? {
            custom: {
              drawStyle: "line",
              lineWidth: 1,
              fillOpacity: 10,
              showPoints: "never",
              thresholdsStyle: { mode: p.thresholds ? "line" : "off" },
            },
          }
          : {}),
      },
      overrides: [],
    },
    options: kind === "stat"
      ? { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, colorMode: "value" }
      : { legend: { displayMode: "list", placement: "bottom" }, tooltip: { mode: "multi" } },
    targets: p.targets.map(([expr, legend], i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: DATASOURCE,
      expr,
      legendFormat: legend,
      range: true,
    })),
  };
}

const q = (quantile: number, bucket: string, sel: string) =>
  `histogram_quantile(${quantile}, sum by (le) (rate(${bucket}${sel}[${RI}])))`;

/** vLLM renamed some metrics; `new or old` reads whichever the running version exports. */
const qq = (quantile: number, bucket: string, oldBucket: string, sel: string) =>
  `histogram_quantile(${quantile}, sum by (le) (rate(${bucket}${sel}[${RI}])) or sum by (le) (rate(${oldBucket}${sel}[${RI}])))`;

const M = '{model_name=~"$model"}';

const vllm: DashboardSpec = {
  file: "soulstone-vllm.json",
  uid: "lychd-soulstone-vllm",
  title: "lychd / soulstone-vllm (vLLM)",
  description:
    "vLLM served by soulstone-vllm on 127.0.0.1:8081. Shows No Data while another engine serves.",
  modelFrom: "vllm:num_requests_running",
  rows: [
    {
      title: "Traffic",
      panels: [
        {
          title: "Finished requests by reason",
          unit: "reqps",
          targets: [[
            `sum by (finished_reason) (rate(vllm:request_success_total${M}[${RI}]))`,
            "{{finished_reason}}",
          ]],
        },
        {
          title: "Requests running and waiting",
          unit: "short",
          targets: [
            [`sum(vllm:num_requests_running${M})`, "running"],
            [`sum(vllm:num_requests_waiting${M})`, "waiting"],
          ],
        },
      ],
    },
    {
      title: "Latency",
      panels: [
        {
          title: "Time to first token",
          unit: "s",
          thresholds: [1, 5],
          targets: [
            [q(0.5, "vllm:time_to_first_token_seconds_bucket", M), "p50"],
            [q(0.95, "vllm:time_to_first_token_seconds_bucket", M), "p95"],
            [q(0.99, "vllm:time_to_first_token_seconds_bucket", M), "p99"],
          ],
        },
        {
          title: "Inter-token latency",
          unit: "s",
          thresholds: [0.1, 0.25],
          targets: [
            [
              qq(
                0.5,
                "vllm:inter_token_latency_seconds_bucket",
                "vllm:time_per_output_token_seconds_bucket",
                M,
              ),
              "p50",
            ],
            [
              qq(
                0.95,
                "vllm:inter_token_latency_seconds_bucket",
                "vllm:time_per_output_token_seconds_bucket",
                M,
              ),
              "p95",
            ],
          ],
        },
        {
          title: "End-to-end request latency",
          unit: "s",
          thresholds: [30, 120],
          targets: [
            [q(0.5, "vllm:e2e_request_latency_seconds_bucket", M), "p50"],
            [q(0.95, "vllm:e2e_request_latency_seconds_bucket", M), "p95"],
            [q(0.99, "vllm:e2e_request_latency_seconds_bucket", M), "p99"],
          ],
        },
      ],
    },
    {
      title: "Throughput",
      panels: [
        {
          title: "Tokens per second",
          unit: "short",
          targets: [
            [`sum(rate(vllm:prompt_tokens_total${M}[${RI}]))`, "prompt (prefill)"],
            [`sum(rate(vllm:generation_tokens_total${M}[${RI}]))`, "generated (decode)"],
          ],
        },
        {
          title: "Queue time",
          unit: "s",
          thresholds: [5, 30],
          targets: [[q(0.95, "vllm:request_queue_time_seconds_bucket", M), "p95"]],
        },
      ],
    },
    {
      title: "Saturation",
      panels: [
        {
          title: "KV-cache usage",
          unit: "percentunit",
          max: 1,
          thresholds: [0.8, 0.95],
          targets: [[
            `max(vllm:kv_cache_usage_perc${M} or vllm:gpu_cache_usage_perc${M})`,
            "KV cache",
          ]],
        },
        {
          title: "Preemptions",
          unit: "short",
          description: "Requests evicted for lack of KV-cache space, per second.",
          thresholds: [0.1, 1],
          targets: [[`sum(rate(vllm:num_preemptions_total${M}[${RI}]))`, "preemptions/s"]],
        },
      ],
    },
    {
      title: "Cache",
      panels: [
        {
          title: "Prefix-cache hit rate",
          unit: "percentunit",
          max: 1,
          targets: [[
            `sum(rate(vllm:prefix_cache_hits_total${M}[${RI}]) or rate(vllm:gpu_prefix_cache_hits_total${M}[${RI}])) / sum(rate(vllm:prefix_cache_queries_total${M}[${RI}]) or rate(vllm:gpu_prefix_cache_queries_total${M}[${RI}]))`,
            "hit rate",
          ]],
        },
      ],
    },
  ],
};

const sglang: DashboardSpec = {
  file: "soulstone-sglang.json",
  uid: "lychd-soulstone-sglang",
  title: "lychd / soulstone-sglang (SGLang)",
  description:
    "SGLang served by soulstone-sglang on 127.0.0.1:8081 (started with --enable-metrics). No Data while another engine serves.",
  modelFrom: "sglang:num_running_reqs",
  rows: [
    {
      title: "Traffic",
      panels: [
        {
          title: "Requests per second",
          unit: "reqps",
          targets: [[`sum(rate(sglang:num_requests_total${M}[${RI}]))`, "requests"]],
        },
        {
          title: "Requests running and queued",
          unit: "short",
          targets: [
            [`sum(sglang:num_running_reqs${M})`, "running"],
            [`sum(sglang:num_queue_reqs${M})`, "queued"],
          ],
        },
      ],
    },
    {
      title: "Latency",
      panels: [
        {
          title: "Time to first token",
          unit: "s",
          thresholds: [1, 5],
          targets: [
            [q(0.5, "sglang:time_to_first_token_seconds_bucket", M), "p50"],
            [q(0.95, "sglang:time_to_first_token_seconds_bucket", M), "p95"],
            [q(0.99, "sglang:time_to_first_token_seconds_bucket", M), "p99"],
          ],
        },
        {
          title: "Inter-token latency",
          unit: "s",
          thresholds: [0.1, 0.25],
          targets: [
            [
              qq(
                0.5,
                "sglang:inter_token_latency_seconds_bucket",
                "sglang:time_per_output_token_seconds_bucket",
                M,
              ),
              "p50",
            ],
            [
              qq(
                0.95,
                "sglang:inter_token_latency_seconds_bucket",
                "sglang:time_per_output_token_seconds_bucket",
                M,
              ),
              "p95",
            ],
          ],
        },
        {
          title: "End-to-end request latency",
          unit: "s",
          thresholds: [30, 120],
          targets: [
            [q(0.5, "sglang:e2e_request_latency_seconds_bucket", M), "p50"],
            [q(0.95, "sglang:e2e_request_latency_seconds_bucket", M), "p95"],
            [q(0.99, "sglang:e2e_request_latency_seconds_bucket", M), "p99"],
          ],
        },
      ],
    },
    {
      title: "Throughput",
      panels: [
        {
          title: "Tokens per second",
          unit: "short",
          targets: [
            [`sum(rate(sglang:prompt_tokens_total${M}[${RI}]))`, "prompt (prefill)"],
            [`sum(rate(sglang:generation_tokens_total${M}[${RI}]))`, "generated (decode)"],
          ],
        },
        {
          title: "Generation throughput (engine-reported)",
          unit: "short",
          targets: [[`sum(sglang:gen_throughput${M})`, "tokens/s"]],
        },
      ],
    },
    {
      title: "Saturation",
      panels: [
        {
          title: "KV-pool usage",
          unit: "percentunit",
          max: 1,
          thresholds: [0.8, 0.95],
          targets: [[`max(sglang:token_usage${M})`, "token usage"]],
        },
        {
          title: "KV tokens used of capacity",
          unit: "short",
          targets: [
            [`sum(sglang:num_used_tokens${M})`, "used"],
            [`sum(sglang:max_total_num_tokens${M})`, "capacity"],
          ],
        },
      ],
    },
    {
      title: "Cache",
      panels: [
        {
          title: "Prefix-cache hit rate",
          unit: "percentunit",
          max: 1,
          targets: [
            [`avg(sglang:cache_hit_rate${M})`, "recent batches"],
            [
              `sum(rate(sglang:cached_tokens_total${M}[${RI}])) / sum(rate(sglang:prompt_tokens_total${M}[${RI}]))`,
              "cached / prompt tokens",
            ],
          ],
        },
      ],
    },
  ],
};

const llama: DashboardSpec = {
  file: "soulstone-llama.json",
  uid: "lychd-soulstone-llama",
  title: "lychd / soulstone-llama (llama.cpp)",
  description:
    "llama.cpp served by soulstone-llama on 127.0.0.1:8081 (started with --metrics). llama.cpp exports no histograms and no request counter: latencies are averages. No Data while another engine serves.",
  rows: [
    {
      title: "Traffic",
      panels: [
        {
          title: "Decode calls per second",
          unit: "short",
          description: "llama_decode() calls; moves during generation, unlike the token counters.",
          targets: [["rate(llamacpp:n_decode_total[" + RI + "])", "decode calls/s"]],
        },
        {
          title: "Requests processing and deferred",
          unit: "short",
          targets: [
            ["llamacpp:requests_processing", "processing"],
            ["llamacpp:requests_deferred", "deferred"],
          ],
        },
      ],
    },
    {
      title: "Latency",
      panels: [
        {
          title: "Average time per generated token",
          unit: "s",
          thresholds: [0.1, 0.25],
          targets: [[
            `rate(llamacpp:tokens_predicted_seconds_total[${RI}]) / rate(llamacpp:tokens_predicted_total[${RI}])`,
            "per token",
          ]],
        },
        {
          title: "Average prompt time per token",
          unit: "s",
          targets: [[
            `rate(llamacpp:prompt_seconds_total[${RI}]) / rate(llamacpp:prompt_tokens_total[${RI}])`,
            "per prompt token",
          ]],
        },
      ],
    },
    {
      title: "Throughput",
      panels: [
        {
          title: "Tokens per second",
          unit: "short",
          targets: [
            [`rate(llamacpp:prompt_tokens_total[${RI}])`, "prompt (prefill)"],
            [`rate(llamacpp:tokens_predicted_total[${RI}])`, "generated (decode)"],
          ],
        },
        {
          title: "Engine-reported throughput",
          unit: "short",
          description:
            "llama.cpp averages these since the previous scrape: any second scraper of /metrics resets them.",
          targets: [
            ["llamacpp:prompt_tokens_seconds", "prompt tokens/s"],
            ["llamacpp:predicted_tokens_seconds", "generated tokens/s"],
          ],
        },
      ],
    },
    {
      title: "Saturation",
      panels: [
        {
          title: "Busy slots per decode",
          unit: "short",
          targets: [["llamacpp:n_busy_slots_per_decode", "busy slots"]],
        },
        {
          title: "Longest sequence seen",
          unit: "short",
          description:
            "High-water mark of prompt + generation tokens (typed counter; never rate()d).",
          targets: [["llamacpp:n_tokens_max", "tokens"]],
        },
      ],
    },
    {
      title: "Cache",
      panels: [
        {
          title: "Prompt-cache reuse",
          unit: "percentunit",
          max: 1,
          targets: [[
            `rate(llamacpp:prompt_tokens_cached_total[${RI}]) / (rate(llamacpp:prompt_tokens_cached_total[${RI}]) + rate(llamacpp:prompt_tokens_total[${RI}]))`,
            "cached share of prompt tokens",
          ]],
        },
      ],
    },
  ],
};

const vessel: DashboardSpec = {
  file: "lychd-vessel.json",
  uid: "lychd-vessel",
  title: "lychd / vessel (overview)",
  description:
    "Whichever engine serves on 127.0.0.1:8081: the engine-agnostic lychd: series recorded by the harvester's rules. Series an engine cannot provide stay empty.",
  rows: [
    {
      title: "Serving",
      panels: [
        {
          title: "Engine serving now",
          unit: "none",
          kind: "stat",
          targets: [["lychd:engine_serving", "{{lychd_engine}}"]],
        },
        {
          title: "Scrape health of port 8081",
          unit: "none",
          kind: "stat",
          description: "1 = a soulstone answered the last scrape (on the engine port, or on the " +
            "own port of an engine that sleeps).",
          targets: [['max(up{job="soulstone"})', "up"]],
        },
        {
          title: "Which engine served when",
          unit: "none",
          kind: "state-timeline",
          targets: [["lychd:engine_serving", "{{lychd_engine}}"]],
        },
      ],
    },
    {
      title: "Traffic",
      panels: [
        {
          title: "Requests per second",
          unit: "reqps",
          targets: [["lychd:requests:rate1m", "{{lychd_engine}}"]],
        },
        {
          title: "Requests running and waiting",
          unit: "short",
          targets: [
            ["lychd:requests_running", "{{lychd_engine}} running"],
            ["lychd:requests_waiting", "{{lychd_engine}} waiting"],
          ],
        },
      ],
    },
    {
      title: "Latency",
      panels: [
        {
          title: "Time to first token",
          unit: "s",
          thresholds: [1, 5],
          targets: [
            ["lychd:time_to_first_token_seconds:p95_1m", "{{lychd_engine}} p95"],
            ["lychd:time_to_first_token_seconds:avg_1m", "{{lychd_engine}} avg"],
          ],
        },
        {
          title: "Inter-token latency",
          unit: "s",
          thresholds: [0.1, 0.25],
          targets: [
            ["lychd:inter_token_latency_seconds:p95_1m", "{{lychd_engine}} p95"],
            ["lychd:inter_token_latency_seconds:avg_1m", "{{lychd_engine}} avg"],
          ],
        },
        {
          title: "End-to-end request latency",
          unit: "s",
          thresholds: [30, 120],
          targets: [
            ["lychd:e2e_request_latency_seconds:p95_1m", "{{lychd_engine}} p95"],
            ["lychd:e2e_request_latency_seconds:avg_1m", "{{lychd_engine}} avg"],
          ],
        },
      ],
    },
    {
      title: "Throughput",
      panels: [
        {
          title: "Tokens per second",
          unit: "short",
          targets: [
            ["lychd:prompt_tokens:rate1m", "{{lychd_engine}} prompt"],
            ["lychd:generation_tokens:rate1m", "{{lychd_engine}} generated"],
          ],
        },
      ],
    },
    {
      title: "Gate",
      panels: [
        {
          title: "Requests held by the gate",
          unit: "none",
          description:
            "Requests waiting on 127.0.0.1:8081 for an engine (a swap, a restart), and those in flight to the engine. Empty with gate: false.",
          targets: [
            ["lychd:gate_requests_held", "held"],
            ["lychd:gate_requests_in_flight", "in flight"],
          ],
        },
        {
          title: "Hold wait p95",
          unit: "s",
          description: "How long held requests waited for an engine, 95th percentile over 5 min.",
          targets: [["lychd:gate_hold_wait_seconds:p95_5m", "p95"]],
        },
        {
          title: "Swaps",
          unit: "none",
          description: "Swaps through the gate per minute, by from, to and result.",
          targets: [["lychd:gate_swaps:increase1m", "{{from}} -> {{to}} {{result}} ({{kind}})"]],
        },
      ],
    },
    {
      title: "On demand",
      panels: [
        {
          title: "Held, by the engine they wait for",
          unit: "none",
          description:
            "On demand: requests waiting for the engine whose model they named ((any): no engine in particular: no model named, or a swap by hand). A swap to an engine is the Swaps panel's -> engine.",
          targets: [["lychd:gate_requests_held_by_engine", "{{engine}}"]],
        },
        {
          title: "Hold wait p95, by engine",
          unit: "s",
          description:
            "How long requests waited for the engine whose model they named, 95th percentile over 5 min.",
          targets: [["lychd:gate_hold_wait_seconds_by_engine:p95_5m", "{{engine}}"]],
        },
      ],
    },
    {
      title: "Gate answers",
      panels: [
        {
          title: "Requests through the gate",
          unit: "reqps",
          targets: [["lychd:gate_requests:rate1m", "{{engine}} {{code}}"]],
        },
        {
          title: "Requests the gate refused",
          unit: "reqps",
          description:
            "503s for held too long or too many held, 502s for an engine that did not answer.",
          targets: [["lychd:gate_refused:rate1m", "{{reason}}"]],
        },
        {
          title: "Swap phases (avg, 15 min)",
          unit: "s",
          targets: [["lychd:gate_swap_phase_seconds:avg_15m", "{{phase}}"]],
        },
      ],
    },
    {
      title: "Saturation and cache",
      panels: [
        {
          title: "KV-cache usage",
          unit: "percentunit",
          max: 1,
          thresholds: [0.8, 0.95],
          targets: [["lychd:kv_cache_usage_ratio", "{{lychd_engine}}"]],
        },
        {
          title: "Prefix-cache hit rate",
          unit: "percentunit",
          max: 1,
          targets: [["lychd:prefix_cache_hit_ratio:rate1m", "{{lychd_engine}}"]],
        },
      ],
    },
  ],
};

export const DASHBOARD_SPECS: DashboardSpec[] = [vllm, sglang, llama, vessel];

export function renderDashboards(): Record<string, string> {
  return Object.fromEntries(
    DASHBOARD_SPECS.map((s) => [s.file, JSON.stringify(dashboard(s), null, 2) + "\n"]),
  );
}

if (import.meta.main) {
  for (const [file, text] of Object.entries(renderDashboards())) {
    await Deno.writeTextFile(new URL(`../dashboards/${file}`, import.meta.url), text);
    console.log(`wrote dashboards/${file}`);
  }
}
