/** A real Prometheus server (Debian's package) on a loopback port of its own, for tests. */
import { freePort } from "./ports.ts";
import { TOOLS } from "./tools.ts";

export interface PrometheusServer {
  url: string;
  /** Instant query; returns the result vector. */
  query(expr: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]>;
  queryRange(
    expr: string,
    start: number,
    end: number,
    step: number,
  ): Promise<{ metric: Record<string, string>; values: [number, string][] }[]>;
  rules(): Promise<{ name: string; evaluationTime: number; rules: unknown[] }[]>;
  stop(): Promise<void>;
}

export async function startPrometheus(configFile: string): Promise<PrometheusServer> {
  const storage = await Deno.makeTempDir({ prefix: "lychd-tsdb-" });
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(TOOLS.prometheus!, {
    args: [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${storage}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) break;
      log += value;
    }
  })();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await Deno.remove(storage, { recursive: true }).catch(() => {});
  };
  // Generous: a loaded CI machine takes far longer than the second or so it takes idle.
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await fetch(`${url}/-/ready`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus did not become ready:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const api = async (path: string) => {
    const r = await fetch(`${url}/api/v1/${path}`);
    const body = await r.json();
    if (body.status !== "success") throw new Error(`${path}: ${JSON.stringify(body)}`);
    return body.data;
  };
  return {
    url,
    query: async (expr) => (await api(`query?query=${encodeURIComponent(expr)}`)).result,
    queryRange: async (expr, start, end, step) =>
      (await api(
        `query_range?query=${encodeURIComponent(expr)}&start=${start}&end=${end}&step=${step}`,
      )).result,
    rules: async () => (await api("rules")).groups,
    stop,
  };
}
