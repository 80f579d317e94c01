/**
 * For tests/gate_listen_test.ts, run inside a network namespace of its own: starts the real
 * `lychd gate` (deno.json's permission set) in the test home HOME with a soft limit of LIMIT open
 * files, opens connections to 8081 until the gate takes no more, closes them, and waits for the
 * gate to answer again. Prints one JSON line: what it saw, and the gate's log.
 *
 *   gate_flood_main.ts HOME LIMIT
 */
import { lychdArgs } from "./cli.ts";

const [home, limit] = Deno.args;
const URL = "http://127.0.0.1:8081/lychd/metrics";
const DEADLINE_MS = 60_000;

const gate = new Deno.Command("sh", {
  args: [
    "-c",
    `ulimit -n ${Number(limit)} && exec "$0" "$@"`,
    Deno.execPath(),
    ...lychdArgs(["gate"]),
  ],
  clearEnv: true,
  env: {
    HOME: home,
    XDG_RUNTIME_DIR: `${home}/run`,
    PATH: `${home}/.fakebin:/usr/bin:/bin`,
    DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
    NO_COLOR: "1",
  },
  stdout: "null",
  stderr: "piped",
}).spawn();
let log = "";
const logDone = gate.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
  new WritableStream({ write: (t) => void (log += t) }),
);
let exited: Deno.CommandStatus | null = null;
gate.status.then((s) => (exited = s));

// A new connection for every look: one kept alive from before the flood would be served by a
// listener that no longer accepts.
const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });

async function answers(): Promise<boolean> {
  try {
    const r = await fetch(URL, { client, signal: AbortSignal.timeout(2000) });
    await r.body?.cancel();
    return r.status === 200;
  } catch {
    return false;
  }
}

async function waitUntilAnswers(): Promise<boolean> {
  const until = Date.now() + DEADLINE_MS;
  while (Date.now() < until && exited === null) {
    if (await answers()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

const answeredFirst = await waitUntilAnswers();
// Connections the gate accepts and keeps (they send nothing), until it cannot take another:
// a connect refused, or one left waiting in the backlog for a second.
const conns: Deno.Conn[] = [];
let stoppedBy = "400 opened";
while (answeredFirst && conns.length < 400) {
  const attempt = Deno.connect({ hostname: "127.0.0.1", port: 8081 });
  const timer = new Promise<"slow">((r) => setTimeout(() => r("slow"), 1000));
  const c = await Promise.race([attempt, timer]).catch((e) => e as Error);
  if (c === "slow") {
    stoppedBy = "a connect waited 1 s";
    attempt.then((late) => late.close(), () => {});
    break;
  }
  if (c instanceof Error) {
    stoppedBy = `a connect failed: ${c.message}`;
    break;
  }
  conns.push(c);
}
const opened = conns.length;
await new Promise((r) => setTimeout(r, 300));
for (const c of conns) c.close();
const answeredAgain = answeredFirst && await waitUntilAnswers();

const exitedEarly = exited !== null;
if (!exitedEarly) gate.kill("SIGTERM");
const status = await gate.status;
await logDone;
console.log(JSON.stringify({
  answeredFirst,
  opened,
  stoppedBy,
  answeredAgain,
  exitedEarly,
  code: status.code,
  log,
}));
