/**
 * Sleep and wake (lib/sleep.ts) against the stand-in engine (tests/e2e/fake_engine.ts, vLLM's
 * routes and hazards) over real loopback HTTP: the probe tells asleep from ready, both levels
 * sleep and wake (level 2 reloads the weights, or the first completion fails), and an engine
 * without the routes, or one that dies on /sleep, is reported as not asleep.
 */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { denoHost } from "../lib/host.ts";
import { probe } from "../lib/readiness.ts";
import { putToSleep, wake } from "../lib/sleep.ts";
import type { Engine } from "../lib/units/model.ts";
import { freePort } from "./support/ports.ts";
import { waitUntil } from "./support/wait.ts";

const FAKE = new URL("./e2e/fake_engine.ts", import.meta.url).pathname;

async function standIn(level: 1 | 2, extra: string[] = [], env = { VLLM_SERVER_DEV_MODE: "1" }) {
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
      "--enable-sleep-mode",
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
    sleep: { level, api: "vllm" },
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
