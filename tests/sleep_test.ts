/**
 * Sleep and wake (lib/sleep.ts) against the stand-in engine (tests/e2e/fake_engine.ts, vLLM's
 * routes and hazards) over real loopback HTTP: the probe tells asleep from ready, both levels
 * sleep and wake (level 2 reloads the weights, or the first completion fails), and an engine
 * without the routes, or one that dies on /sleep, is reported as not asleep.
 */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { denoHost } from "../lib/host.ts";
import { probe } from "../lib/readiness.ts";
import { putToSleep, wake, whyNotSleep } from "../lib/sleep.ts";
import type { Engine } from "../lib/units/model.ts";
import { freePort } from "./support/ports.ts";
import { waitUntil } from "./support/wait.ts";

const FAKE = new URL("./e2e/fake_engine.ts", import.meta.url).pathname;

async function standIn(
  level: 1 | 2,
  extra: string[] = [],
  env = { VLLM_SERVER_DEV_MODE: "1" },
  api: "vllm" | "sglang" = "vllm",
) {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-q",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      FAKE,
      "org/m",
      ...(api === "vllm" ? ["--enable-sleep-mode"] : []),
      "--port",
      String(port),
      "--fake-load-ms",
      "0",
      "--fake-wake-ms",
      "20",
      "--fake-sleep-ms",
      "20",
      ...extra,
    ],
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const engine = {
    name: "standin",
    hostPort: port,
    healthPath: "/health",
    model: "org/m",
    sleep: { level, api },
    settings: { stopTimeoutSec: 5, startTimeoutSec: 5 },
  } as unknown as Engine;
  await waitUntil(
    async () => (await probe(denoHost, engine, 500)).state !== "down",
    "the stand-in listening",
  );
  const chat = () =>
    denoHost.httpPostJson(`http://127.0.0.1:${port}/v1/chat/completions`, { model: "org/m" }, 5000);
  return {
    engine,
    chat,
    async close() {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.output();
    },
    status: () => child.status,
  };
}

for (const level of [1, 2] as const) {
  Deno.test(`sleep level ${level}: the probe says asleep, nothing is generated, wake serves again`, async () => {
    const s = await standIn(level);
    try {
      assertEquals((await probe(denoHost, s.engine)).state, "ready");
      assertDeep(await putToSleep(denoHost, s.engine, 5000), { ok: true });
      assertEquals((await probe(denoHost, s.engine)).state, "asleep");
      const refused = await s.chat();
      assert("status" in refused && refused.status === 500, JSON.stringify(refused));
      assertDeep(await wake(denoHost, s.engine, 5000), { ok: true });
      assertEquals((await probe(denoHost, s.engine)).state, "ready");
      // Level 2 dropped the weights: only their reload makes the first completion work.
      const served = await s.chat();
      assert("status" in served && served.status === 200, JSON.stringify(served));
    } finally {
      await s.close();
    }
  });
}

Deno.test("sleep: an engine without the routes (no dev mode) or one that dies on /sleep is not asleep", async () => {
  const noRoutes = await standIn(1, [], { VLLM_SERVER_DEV_MODE: "0" });
  try {
    const r = await putToSleep(denoHost, noRoutes.engine, 2000);
    assert(!r.ok);
    assertMatch(r.reason, /^\/sleep\?level=1: 404/);
    assertEquals((await probe(denoHost, noRoutes.engine)).state, "loading");
  } finally {
    await noRoutes.close();
  }
  const crash = await standIn(1, ["--fake-crash-on-sleep"]);
  try {
    const r = await putToSleep(denoHost, crash.engine, 1000);
    assert(!r.ok);
    assertMatch(r.reason, /went away/);
    assertEquals((await crash.status()).code, 1);
  } finally {
    await crash.close();
  }
});

Deno.test("room to sleep: max_asleep, and at level 1 the weights against the host's available memory", () => {
  const GiB = 2 ** 30;
  const room = { level: 1 as const, weightsBytes: 15 * GiB, availableBytes: 20 * GiB };
  assertEquals(whyNotSleep({ ...room, asleepAfter: 2, maxAsleep: 2 }), null);
  assertMatch(
    whyNotSleep({ ...room, asleepAfter: 3, maxAsleep: 2 })!,
    /^at most 2 engines may sleep at once \(gate\.max_asleep\), and 2 already do$/,
  );
  assertMatch(whyNotSleep({ ...room, asleepAfter: 1, maxAsleep: 0 })!, /at most 0 engines/);
  // 18 GiB usable of 20 (a tenth left free): 18 fits, 18.5 does not.
  assertEquals(
    whyNotSleep({ ...room, weightsBytes: 18 * GiB, asleepAfter: 1, maxAsleep: 2 }),
    null,
  );
  assertMatch(
    whyNotSleep({ ...room, weightsBytes: 18.5 * GiB, asleepAfter: 1, maxAsleep: 2 })!,
    /^its weights \(18\.5 GiB\) would not fit in the host's available memory \(20\.0 GiB, of which lychd leaves 10 % free\) at sleep level 1$/,
  );
  // Level 2 drops the weights; unknown sizes are not guessed at.
  const big = { weightsBytes: 99 * GiB, availableBytes: 20 * GiB, asleepAfter: 1, maxAsleep: 2 };
  assertEquals(whyNotSleep({ ...big, level: 2 }), null);
  assertEquals(whyNotSleep({ ...big, level: 1, weightsBytes: null }), null);
  assertEquals(whyNotSleep({ ...big, level: 1, availableBytes: null }), null);
});

Deno.test("sleep through SGLang's routes: release and resume; the probe goes by lychd's mark; no CPU backup, no weights", async () => {
  // What lychd starts SGLang with for sleep: 1 (lib/engines.ts SLEEP_FLAGS).
  const flags = ["--enable-memory-saver", "--enable-weights-cpu-backup"];
  const s = await standIn(1, flags, { VLLM_SERVER_DEV_MODE: "0" }, "sglang");
  // The mark, as `systemctl show-environment` prints it.
  let marked = false;
  const asked: string[] = [];
  const host = {
    ...denoHost,
    httpGet: (url: string, ms: number) => {
      asked.push(new URL(url).pathname);
      return denoHost.httpGet(url, ms);
    },
    run: (program: string, args: string[]) =>
      Promise.resolve(
        program === "systemctl" && args.at(-1) === "show-environment"
          ? { code: 0, stdout: `LANG=C\n${marked ? "LYCHD_ASLEEP_STANDIN=1\n" : ""}`, stderr: "" }
          : { code: 127, stdout: "", stderr: "not here" },
      ),
  };
  try {
    assertEquals((await probe(host, s.engine, 2000, ["--user"])).state, "ready");
    marked = true;
    assertDeep(await putToSleep(host, s.engine, 5000), { ok: true });
    asked.length = 0;
    assertEquals((await probe(host, s.engine, 2000, ["--user"])).state, "asleep");
    // Marked, it is not asked anything: SGLang's /health may run a generation.
    assertDeep(asked, []);
    // Without a scope the mark cannot be read: never "ready".
    assertEquals((await probe(host, s.engine)).state, "loading");
    const refused = await s.chat();
    assert("status" in refused && refused.status === 500, JSON.stringify(refused));
    marked = false;
    assertDeep(await wake(host, s.engine, 5000), { ok: true });
    assertEquals((await probe(host, s.engine, 2000, ["--user"])).state, "ready");
    const served = await s.chat();
    assert("status" in served && served.status === 200, JSON.stringify(served));
  } finally {
    await s.close();
  }
  // Why SGLang sleeps at level 1 only: without the host copy the weights do not come back.
  const bare = await standIn(1, ["--enable-memory-saver"], { VLLM_SERVER_DEV_MODE: "0" }, "sglang");
  try {
    assertDeep(await putToSleep(denoHost, bare.engine, 5000), { ok: true });
    assertDeep(await wake(denoHost, bare.engine, 5000), { ok: true });
    const lost = await bare.chat();
    assert("status" in lost && lost.status === 500, JSON.stringify(lost));
  } finally {
    await bare.close();
  }
});

Deno.test("sleep through SGLang's routes: a release while a request is in flight is refused, and says so", async () => {
  const s = await standIn(
    1,
    ["--enable-memory-saver", "--enable-weights-cpu-backup", "--fake-refuse-busy-release"],
    { VLLM_SERVER_DEV_MODE: "0" },
    "sglang",
  );
  try {
    // A streamed completion held open keeps one request in flight.
    const stream = await fetch(`http://127.0.0.1:${s.engine.hostPort}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "org/m", stream: true }),
    });
    const r = await putToSleep(denoHost, s.engine, 5000);
    assert(!r.ok);
    assertMatch(r.reason, /^\/release_memory_occupation: 500 .*not idle/);
    await stream.body?.cancel();
  } finally {
    await s.close();
  }
});
