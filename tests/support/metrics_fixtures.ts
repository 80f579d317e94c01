/**
 * A small HTTP server playing an engine's /metrics on loopback, for the real-Prometheus tests.
 * It serves one engine's fixture text at a time (tests/fixtures/metrics/), and every scrape moves
 * the values on the way a busy engine would: counters grow, histograms gain observations around
 * their mean (buckets stay cumulative), gauges stay. Zero counters stay zero (nothing happened).
 */
const FIXTURES = new URL("../fixtures/metrics/", import.meta.url);

export const METRIC_FIXTURES: Record<string, string> = {
  vllm: "vllm.prom",
  sglang: "sglang.prom",
  llama: "llama.cpp-b10587.prom",
};

export async function fixtureText(engine: string): Promise<string> {
  return await Deno.readTextFile(new URL(METRIC_FIXTURES[engine], FIXTURES));
}

interface Sample {
  name: string;
  labels: string;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/;

/** The fixture after `step` scrapes' worth of traffic. */
export function evolve(text: string, step: number): string {
  const types = new Map<string, string>();
  const samples: (Sample | string)[] = [];
  for (const line of text.split("\n")) {
    const t = line.match(/^# TYPE (\S+) (\S+)$/);
    if (t) types.set(t[1], t[2]);
    const m = line.match(SAMPLE);
    if (!line.startsWith("#") && m) {
      samples.push({ name: m[1], labels: m[2] ?? "", value: Number(m[3]) });
    } else samples.push(line);
  }
  const family = (name: string) => {
    if (types.has(name)) return { name, type: types.get(name)! };
    const base = name.replace(/_(bucket|sum|count)$/, "");
    return { name: base, type: types.get(base) ?? "untyped" };
  };
  const withoutLe = (labels: string) => labels.replace(/,?le="[^"]*"/, "").replace("{,", "{");
  // Mean of each histogram series, so new observations land where the old ones did.
  const stats = new Map<string, { sum: number; count: number }>();
  for (const s of samples) {
    if (typeof s === "string" || family(s.name).type !== "histogram") continue;
    const key = family(s.name).name + withoutLe(s.labels);
    const st = stats.get(key) ?? { sum: 0, count: 0 };
    if (s.name.endsWith("_sum")) st.sum = s.value;
    if (s.name.endsWith("_count")) st.count = s.value;
    stats.set(key, st);
  }
  return samples.map((s) => {
    if (typeof s === "string") return s;
    const f = family(s.name);
    let value = s.value;
    if (f.type === "counter" && value > 0 && !s.name.endsWith("n_tokens_max")) {
      value += step * Math.max(1, Math.round(value * 0.05));
    } else if (f.type === "histogram") {
      const st = stats.get(f.name + withoutLe(s.labels))!;
      const mean = st.count > 0 ? st.sum / st.count : 0;
      const added = step * Math.max(1, Math.round(st.count * 0.05));
      const le = s.labels.match(/le="([^"]*)"/)?.[1];
      if (s.name.endsWith("_count")) value += added;
      else if (s.name.endsWith("_sum")) value += added * mean;
      else if (le !== undefined && (le === "+Inf" || Number(le) >= mean)) value += added;
    }
    return `${s.name}${s.labels} ${value}`;
  }).join("\n");
}

export interface MetricsServer {
  port: number;
  /** Which engine answers from now on; null = connection kept but 503 (nothing serving). */
  serve(engine: string | null): void;
  scrapes: number;
  close(): Promise<void>;
}

export async function startMetricsServer(engine: string): Promise<MetricsServer> {
  const texts = Object.fromEntries(
    await Promise.all(Object.keys(METRIC_FIXTURES).map(async (e) => [e, await fixtureText(e)])),
  );
  let current: string | null = engine;
  let scrapes = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/metrics" || current === null) {
      return new Response("not found\n", { status: 404 });
    }
    scrapes++;
    return new Response(evolve(texts[current], scrapes) + "\n", {
      headers: { "content-type": "text/plain; version=0.0.4" },
    });
  });
  return {
    port: server.addr.port,
    serve(e) {
      current = e;
    },
    get scrapes() {
      return scrapes;
    },
    close: () => server.shutdown(),
  };
}
