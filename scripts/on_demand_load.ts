/**
 * The mixed load of scripts/bench_on_demand.ts, run inside the guest: CLIENTS clients send chat
 * completions to URL for SECONDS. Each request names one of MODELS (none given: no `model`
 * field); a client keeps its model for 4 requests, then picks one again at random. max_tokens is
 * 16-64, half the requests stream, each one on a fresh connection, none retried. A request fails
 * unless it ends in HTTP 200 with a whole answer (a message; or chunks ending in [DONE]).
 *
 * Prints one JSON line (a `LoadResult`): completed (within the window), failed, the failures by
 * message, latencies of the completed requests, completions per second of the window, and the
 * requests still running when it ended (given up 60 s later at most, counted nowhere else).
 *
 *   deno run --allow-net=127.0.0.1 scripts/on_demand_load.ts URL SECONDS CLIENTS [MODEL]...
 */
export interface LoadResult {
  completed: number;
  failed: number;
  /** Failure message (status and the start of the answer) -> how many. */
  failures: Record<string, number>;
  /** Milliseconds, of every completed request, sorted. */
  latencies: number[];
  /** Completions in each second of the window. */
  perSecond: number[];
  /** Started in the window, not ended by its end. */
  unfinished: number;
}

const PROMPT = "Tell me about the gate of the vessel. ".repeat(4);

async function one(url: string, model: string | null, stream: boolean): Promise<string | null> {
  // A fresh connection per request, as many clients (and curl) make them.
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const quit = AbortSignal.timeout(120_000);
  try {
    const r = await fetch(url, {
      method: "POST",
      client,
      signal: quit,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        ...(model ? { model } : {}),
        messages: [{ role: "user", content: PROMPT }],
        max_tokens: 16 + Math.floor(Math.random() * 49),
        stream,
      }),
    });
    const text = await r.text();
    if (r.status !== 200) return `${r.status} ${text.slice(0, 120)}`;
    if (!stream) {
      const j = JSON.parse(text);
      return typeof j.choices?.[0]?.message?.content === "string"
        ? null
        : `200 ${text.slice(0, 80)}`;
    }
    const events = text.split("\n\n").filter((e) => e.startsWith("data: "));
    return events.at(-1) === "data: [DONE]" ? null : `200 cut stream ${text.slice(-80)}`;
  } catch (e) {
    return `${(e as Error).name}: ${(e as Error).message}`.slice(0, 160);
  } finally {
    client.close();
  }
}

export async function runLoad(
  url: string,
  seconds: number,
  clients: number,
  models: string[],
): Promise<LoadResult> {
  const t0 = Date.now();
  const end = t0 + seconds * 1000;
  const result: LoadResult = {
    completed: 0,
    failed: 0,
    failures: {},
    latencies: [],
    perSecond: Array(seconds).fill(0),
    unfinished: 0,
  };
  const pick = () => models.length ? models[Math.floor(Math.random() * models.length)] : null;
  await Promise.all(Array.from({ length: clients }, async () => {
    let model = pick();
    for (let i = 0; Date.now() < end; i++) {
      if (i > 0 && i % 4 === 0) model = pick();
      const start = Date.now();
      const error = await Promise.race([
        one(url, model, Math.random() < 0.5),
        new Promise<"late">((r) => setTimeout(() => r("late"), Math.max(0, end + 60_000 - start))),
      ]);
      const done = Date.now();
      if (error === "late" || done > end) {
        result.unfinished++;
        return;
      }
      if (error === null) {
        result.completed++;
        result.latencies.push(done - start);
        result.perSecond[Math.floor((done - t0) / 1000)]++;
      } else {
        result.failed++;
        result.failures[error] = (result.failures[error] ?? 0) + 1;
      }
    }
  }));
  result.latencies.sort((a, b) => a - b);
  return result;
}

if (import.meta.main) {
  const [url, seconds, clients, ...models] = Deno.args;
  console.log(JSON.stringify(await runLoad(url, Number(seconds), Number(clients), models)));
  // A request left running past the window must not keep the process alive.
  Deno.exit(0);
}
