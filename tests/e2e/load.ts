/**
 * The gate's load generator (tests/e2e_gate_test.ts): CLIENTS concurrent clients send chat
 * requests to 127.0.0.1:8081, alternately streaming (SSE) and not, each right after the last,
 * until the file STOP appears; then it prints every request as JSON lines on stdout and exits.
 * A request fails if it does not end in HTTP 200 with a complete answer (non-streaming: a
 * message; streaming: chunks ending in [DONE]). `--model NAME` per client (repeatable, used in
 * turn) names the model (on demand); by default none. `--give-up-ms N`: every third client gives
 * up on a request after N ms (a chat UI, a proxy with a timeout), marked `gaveUp`.
 *
 *   deno run --allow-net=127.0.0.1:8081 --allow-read load.ts CLIENTS STOP [--model M]...
 *     [--give-up-ms N]
 */
const [clientsArg, stopFile, ...rest] = Deno.args;
const models = rest.flatMap((a, i) => rest[i - 1] === "--model" ? [a] : []);
const giveUpMs = Number(rest[rest.indexOf("--give-up-ms") + 1] ?? 0) || 0;
const CLIENTS = Number(clientsArg);
const URL = "http://127.0.0.1:8081/v1/chat/completions";
const PROMPT = "Tell me about the gate of the vessel. ".repeat(12);

export interface Outcome {
  client: number;
  stream: boolean;
  model: string | null;
  start: number;
  end: number;
  ok: boolean;
  status: number;
  /** The answering engine's system_fingerprint (port=N), or the error. */
  by: string;
  /** The client gave up on it (--give-up-ms). */
  gaveUp?: boolean;
}

const stopped = async () => await Deno.stat(stopFile).then(() => true, () => false);

async function one(
  client: number,
  stream: boolean,
  model: string | null,
  giveUp: number,
): Promise<Outcome> {
  const start = Date.now();
  const quit = new AbortController();
  const timer = giveUp ? setTimeout(() => quit.abort(), giveUp) : undefined;
  const done = (ok: boolean, status: number, by: string): Outcome => ({
    client,
    stream,
    model,
    start,
    end: Date.now(),
    ok,
    status,
    by,
  });
  try {
    const r = await fetch(URL, {
      method: "POST",
      signal: quit.signal,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        ...(model ? { model } : {}),
        messages: [{ role: "user", content: PROMPT }],
        max_tokens: 8,
        stream,
      }),
    });
    const text = await r.text();
    if (r.status !== 200) return done(false, r.status, text.slice(0, 200));
    if (!stream) {
      const j = JSON.parse(text);
      const ok = typeof j.choices?.[0]?.message?.content === "string";
      return done(ok, 200, j.system_fingerprint ?? `model=${j.model}`);
    }
    const events = text.split("\n\n").filter((e) => e.startsWith("data: "));
    const ok = events.length >= 2 && events.at(-1) === "data: [DONE]";
    const first = ok ? JSON.parse(events[0].slice(6)) : null;
    return done(ok, 200, first?.system_fingerprint ?? `stream: ${text.slice(-120)}`);
  } catch (e) {
    if (quit.signal.aborted) return { ...done(false, 0, "gave up"), gaveUp: true };
    return done(false, 0, `${(e as Error).message} ${(e as Error).cause ?? ""}`);
  } finally {
    clearTimeout(timer);
  }
}

const results: Outcome[] = [];
await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
  const model = models.length ? models[client % models.length] : null;
  for (let i = 0; !(await stopped()); i++) {
    const r = await one(client, i % 2 === 1, model, client % 3 === 0 ? giveUpMs : 0);
    results.push(r);
    // A client that got an error waits a little before its next request, as client libraries do.
    if (!r.ok) await new Promise((res) => setTimeout(res, 100));
  }
}));
for (const r of results) console.log(JSON.stringify(r));
