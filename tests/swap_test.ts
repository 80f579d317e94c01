/**
 * swap, status and stop against systemd in miniature (tests/support/fake_systemd.ts): every
 * path of a swap, on a fake clock. The same commands run under real systemd in
 * e2e_sandbox_test.ts.
 */
import { status } from "../lib/commands/status.ts";
import { stop } from "../lib/commands/stop.ts";
import { logs } from "../lib/commands/logs.ts";
import { swap, swapDefaults, type SwapOptions } from "../lib/commands/swap.ts";
import type { Override } from "../lib/config/yaml.ts";
import { LychdError } from "../lib/errors.ts";
import { EXIT } from "../lib/exit.ts";
import { assert, assertDeep, assertEquals, assertMatch, assertRejects } from "./support/assert.ts";
import { type EngineScript, installedSystemd } from "./support/fake_systemd.ts";

const UNITS = "/home/ada/.config/containers/systemd";
const CONFIG = "/home/ada/.config/lychd/lychd.yaml";
const setup = { system: false, configPath: null, overrides: [] as Override[] };

const installed = (engines: Record<string, EngineScript>, active: string | null) =>
  installedSystemd(engines, active);

function opts(engine: string, extra: Partial<SwapOptions> = {}): SwapOptions {
  return { ...swapDefaults(setup, engine), ...extra };
}

// llama and vllm on the CPU: a swap to them is one `systemctl start`, and systemd's
// Conflicts=/After= do the stop. sglang (NVIDIA) is stopped to, its GPU memory checked (no
// nvidia-smi here: "not checked"), then started; gpu_memory_test.ts tests that check.
const ENGINES = (): Record<string, EngineScript> => ({
  llama: { model: "org/llama-gguf:Q4", refusedMs: 100, readyMs: 1500, gpu: "cpu" },
  vllm: { model: "Qwen/Qwen2.5-7B-Instruct", refusedMs: 3000, readyMs: 3000, gpu: "cpu" },
  sglang: { model: "org/sglang", readyMs: 800 },
});

Deno.test("swap: stops the old engine, waits through refused and 503, reports the phases", async () => {
  // Phase times of the script's own (not the fake's defaults): the report measures them.
  const engines = ENGINES();
  engines.llama.stopMs = 1200;
  engines.vllm.startMs = 700;
  engines.vllm.warmupMs = 900;
  const fs = await installed(engines, "llama");
  assertEquals(await swap(fs.host, opts("vllm")), 0, fs.host.stderr);
  assertMatch(
    fs.host.stdout,
    /^vllm ready in \d+\.\d s \(old engine stopped 1\.2 s, container up 0\.7 s, model loaded 3\.\d s, first request 0\.9 s\)\n$/,
  );
  // The warm-up: one short completion, to the model the engine lists, once it is healthy.
  assertDeep(fs.completions, [{
    engine: "soulstone-vllm.service",
    body: { model: "Qwen/Qwen2.5-7B-Instruct", prompt: "Hello", max_tokens: 4, temperature: 0 },
  }]);
  assertDeep(fs.bindFailures, []);
  assertEquals(
    fs.host.calls[0],
    "podman image exists docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64",
  );
  assertDeep(fs.host.calls.filter((c) => c.startsWith("systemctl") && !c.includes(" show ")), [
    "systemctl --user daemon-reload",
    "systemctl --user start soulstone-vllm.service",
  ]);
  // The engine's own latest log line is shown while it loads.
  assertMatch(fs.host.stderr, /\] vllm says: engine: out of patience\n/);
  assertEquals(fs.state("soulstone-llama.service").state, "inactive");
  assertEquals(fs.state("soulstone-vllm.service").state, "active");
  // vllm is now the boot engine, in the units and in lychd.yaml.
  assertMatch(fs.host.text(`${UNITS}/soulstone-vllm.container`)!, /^WantedBy=default\.target$/m);
  assert(!fs.host.text(`${UNITS}/soulstone-llama.container`)!.includes("[Install]"));
  assertMatch(fs.host.text(CONFIG)!, /^active: vllm$/m);
  // Plain progress lines on a non-terminal: phases with elapsed time.
  assertMatch(fs.host.stderr, /\] vllm: stopping llama, then starting vllm\n/);
  assertMatch(fs.host.stderr, /\] vllm: waiting for the server to open its port\n/);
});

Deno.test("swap: waits for /v1/models to list the configured model, not just /health", async () => {
  const engines = ENGINES();
  const fs = await installed(engines, "llama");
  // Healthy at once, but serving another model until the config is fixed: never ready.
  const http = fs.http.bind(fs);
  fs.http = (url, body) =>
    url.endsWith("/v1/models") && fs.state("soulstone-sglang.service").state === "active"
      ? { status: 200, body: '{"data":[{"id":"/models/other.gguf"}]}' }
      : http(url, body);
  assertEquals(await swap(fs.host, opts("sglang", { timeoutSec: 5 })), EXIT.ROLLED_BACK);
  assertMatch(fs.host.stderr, /sglang: up, but serves \/models\/other\.gguf, not org\/sglang/);
  assertMatch(fs.host.stderr, /Rolling back to llama/);
});

Deno.test("swap: to the engine already serving is a no-op", async () => {
  const fs = await installed(ENGINES(), "sglang");
  fs.host.clock += 5000;
  assertEquals(await swap(fs.host, opts("sglang")), 0);
  assertMatch(
    fs.host.stdout,
    /sglang is already active and healthy \(serves org\/sglang\); nothing to do/,
  );
  assert(!fs.host.calls.some((c) => c.includes("start")));
});

Deno.test("swap: a readiness timeout prints the journal and rolls back to the previous engine", async () => {
  const engines = ENGINES();
  engines.vllm.readyMs = null;
  const fs = await installed(engines, "llama");
  assertEquals(await swap(fs.host, opts("vllm", { timeoutSec: 60 })), EXIT.ROLLED_BACK);
  assertMatch(
    fs.host.stderr,
    /vllm failed: not ready after 60\.0 s \(last answer on http:\/\/127\.0\.0\.1:8081\/health: 503 Loading model\)/,
  );
  assertMatch(
    fs.host.stderr,
    /Last lines of soulstone-vllm\.service's journal:\n {2}\| engine: loading weights/,
  );
  assertMatch(
    fs.host.stderr,
    /llama ready in .*\nThe swap to vllm failed; llama serves again, as before\./,
  );
  assertEquals(fs.state("soulstone-llama.service").state, "active");
  assertEquals(fs.state("soulstone-vllm.service").state, "inactive");
  assertMatch(fs.host.text(CONFIG)!, /^active: llama$/m);
  assertMatch(fs.host.text(`${UNITS}/soulstone-llama.container`)!, /^WantedBy=default\.target$/m);
});

Deno.test("swap: a unit that fails to start, or dies while loading, is rolled back", async () => {
  for (const script of [{ failStart: true }, { dieMs: 2000 }]) {
    const engines = ENGINES();
    Object.assign(engines.sglang, script, { readyMs: 10_000 });
    const fs = await installed(engines, "llama");
    const t0 = fs.host.clock;
    assertEquals(await swap(fs.host, opts("sglang")), EXIT.ROLLED_BACK, JSON.stringify(script));
    assertMatch(
      fs.host.stderr,
      script.failStart
        ? /sglang failed: systemctl start .* failed: Job for/
        : /sglang failed: the unit is failed/,
    );
    assert(fs.host.clock - t0 < 10_000, "a dead unit is noticed long before the timeout");
    assertEquals(fs.state("soulstone-llama.service").state, "active");
  }
});

Deno.test("swap --no-rollback leaves things as they are; with nothing before, the failed engine is stopped", async () => {
  const engines = ENGINES();
  engines.vllm.readyMs = null;
  const fs = await installed(engines, "llama");
  assertEquals(
    await swap(fs.host, opts("vllm", { timeoutSec: 5, rollback: false })),
    EXIT.NOT_SERVING,
  );
  assertMatch(fs.host.stderr, /Not rolling back \(--no-rollback\)/);
  assertEquals(fs.state("soulstone-vllm.service").state, "active");

  const fresh = await installed(engines, null);
  assertEquals(await swap(fresh.host, opts("vllm", { timeoutSec: 5 })), EXIT.NOT_SERVING);
  assertMatch(
    fresh.host.stderr,
    /No engine served before the swap; vllm is stopped now and llama is the boot engine\. Nothing serves/,
  );
  assertEquals(fresh.state("soulstone-vllm.service").state, "inactive");
  assertMatch(fresh.host.text(CONFIG)!, /^active: llama$/m);
  assertMatch(
    fresh.host.text(`${UNITS}/soulstone-llama.container`)!,
    /^WantedBy=default\.target$/m,
  );
});

Deno.test("swap: an engine that ignores SIGTERM is killed by the stop timeout, and the report says so", async () => {
  const engines = ENGINES();
  engines.llama.stuckStopMs = 30_000;
  const fs = await installed(engines, "llama");
  assertEquals(await swap(fs.host, opts("sglang")), 0, fs.host.stderr);
  // llama.cpp's own stop timeout (5 s, from its unit) kills it, not a fixed 30 s.
  assertMatch(fs.host.stdout, /old engine stopped 5\.\d s \(killed\)/);
  assert(fs.host.calls.includes("systemctl --user reset-failed soulstone-llama.service"));
  assertEquals(fs.state("soulstone-llama.service").state, "inactive");
});

Deno.test("swap --no-wait returns once the container runs", async () => {
  const fs = await installed(ENGINES(), "llama");
  assertEquals(await swap(fs.host, opts("vllm", { wait: false })), 0);
  assertMatch(fs.host.stdout, /vllm started \(--no-wait/);
});

Deno.test("swap: unknown engine, or units not written", async () => {
  const fs = await installed(ENGINES(), "llama");
  await assertRejects(() => swap(fs.host, opts("tgi")), (e: Error) => {
    assert(e instanceof LychdError);
    assertMatch(e.message, /unknown engine "tgi"; configured: llama, vllm, sglang/);
    return true;
  });
  fs.host.files.delete(`${UNITS}/soulstone-vllm.container`);
  await assertRejects(
    () => swap(fs.host, opts("vllm")),
    /soulstone-vllm\.container is not there: run `lychd init` first/,
  );
});

Deno.test("status: healthy, loading, nothing active; --json is stable", async () => {
  const fs = await installed(ENGINES(), "llama");
  fs.missingImages.add("docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64");
  fs.host.files.set("/home/ada/.cache/huggingface/hub/models--org--sglang/blobs/abc", {
    data: new TextEncoder().encode("safetensors"),
    mode: 0o644,
  });
  fs.host.clock += 200;
  assertEquals(
    await status(fs.host, { config: setup, json: false }),
    EXIT.UNHEALTHY,
    "llama still loading",
  );
  assertMatch(fs.host.stdout, /serving: llama, NOT healthy: 503 Loading model/);
  fs.host.clock += 2000;
  fs.host.stdout = "";
  assertEquals(await status(fs.host, { config: setup, json: true }), 0);
  const r = JSON.parse(fs.host.stdout);
  assertDeep(Object.keys(r), [
    "version",
    "mode",
    "active",
    "boot",
    "healthy",
    "endpoint",
    "engines",
    "serving",
    "gate",
    "watchers",
  ]);
  assertEquals(r.gate, null); // gate: false
  assertEquals(r.active, "llama");
  assertEquals(r.healthy, true);
  assertDeep(r.serving, {
    engine: "llama",
    health: "serves org/llama-gguf:Q4",
    models: ["org/llama-gguf:Q4"],
  });
  assertDeep(
    r.engines.map((e: { name: string; state: string; boot: boolean }) => [e.name, e.state, e.boot]),
    [
      ["llama", "active", true],
      ["vllm", "inactive", false],
      ["sglang", "inactive", false],
    ],
  );
  // Images and models on this host: vllm's image is missing; only sglang's model is cached;
  // llama.cpp keeps -hf downloads in a layout of its own (unknown).
  type E = {
    name: string;
    imagePresent: boolean;
    imageBytes: number;
    modelPresent: boolean | null;
    modelBytes: number;
  };
  const byName = Object.fromEntries((r.engines as E[]).map((e) => [e.name, e]));
  assertDeep([byName.llama.imagePresent, byName.vllm.imagePresent, byName.vllm.imageBytes], [
    true,
    false,
    null,
  ]);
  assertEquals(byName.llama.imageBytes, 4200000000);
  assertDeep([byName.llama.modelPresent, byName.vllm.modelPresent, byName.sglang.modelPresent], [
    null,
    false,
    true,
  ]);
  assertEquals(byName.sglang.modelBytes, 11);
  assertDeep(
    r.watchers.map((
      w: { name: string; url: string; healthy: boolean },
    ) => [w.name, w.url, w.healthy]),
    [
      ["harvester", "http://127.0.0.1:9090", false],
      ["scribe", "http://127.0.0.1:3000", false],
    ],
  );
  fs.watchersUp.add(9090);
  fs.host.stdout = "";
  await status(fs.host, { config: setup, json: true });
  assertDeep(JSON.parse(fs.host.stdout).watchers.map((w: { healthy: boolean }) => w.healthy), [
    true,
    false,
  ]);
  assertEquals(await stop(fs.host, { config: setup, all: false }), 0);
  fs.host.stdout = "";
  assertEquals(await status(fs.host, { config: setup, json: false }), EXIT.NOTHING_ACTIVE);
  assertMatch(fs.host.stdout, /serving: nothing/);
});

Deno.test("swap: an engine whose image is not here fails at once, pointing to lychd pull", async () => {
  const fs = await installed(ENGINES(), "llama");
  fs.missingImages.add("docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64");
  const t0 = fs.host.clock;
  await assertRejects(
    () => swap(fs.host, opts("vllm")),
    /the image of vllm, docker\.io\/vllm\/vllm-openai-cpu:v0\.33\.0-x86_64, is not on this host.*lychd pull vllm/,
  );
  assert(fs.host.clock - t0 < 100, "no waiting");
  assert(
    !fs.host.calls.some((c) => c.includes("start") || c.includes("daemon-reload")),
    "nothing was changed",
  );
  assertEquals(fs.state("soulstone-llama.service").state, "active");
});

Deno.test("status: a failed engine is shown as failed, and nothing is active", async () => {
  const engines = ENGINES();
  engines.vllm.dieMs = 500;
  const fs = await installed(engines, "vllm");
  fs.host.clock += 1000;
  assertEquals(await status(fs.host, { config: setup, json: true }), EXIT.NOTHING_ACTIVE);
  const r = JSON.parse(fs.host.stdout);
  assertEquals(r.active, null);
  assertEquals(r.serving, null);
  assertEquals(r.engines.find((e: { name: string }) => e.name === "vllm").state, "failed");
});

Deno.test("logs: the active (or failed) engine by default, a named unit otherwise", async () => {
  const fs = await installed(ENGINES(), "sglang");
  assertEquals(await logs(fs.host, { config: setup, target: null, follow: false, lines: 50 }), 0);
  assertEquals(
    fs.host.calls.at(-1),
    "journalctl --user -u soulstone-sglang.service -n 50 --no-pager",
  );
  assertEquals(
    await logs(fs.host, { config: setup, target: "harvester", follow: true, lines: 5 }),
    0,
  );
  assertEquals(fs.host.calls.at(-1), "journalctl --user -u harvester.service -n 5 --no-pager -f");
  await stop(fs.host, { config: setup, all: false });
  assertEquals(await logs(fs.host, { config: setup, target: null, follow: false, lines: 10 }), 0);
  assertEquals(
    fs.host.calls.at(-1),
    "journalctl --user -u soulstone-sglang.service -n 10 --no-pager",
    "the boot engine",
  );
  await assertRejects(
    () => logs(fs.host, { config: setup, target: "tgi", follow: false, lines: 10 }),
    /no engine or watcher "tgi"; choose one of: llama, vllm, sglang, harvester, scribe/,
  );
});

Deno.test("swap: a warm-up that fails fails the swap and rolls back; warmup: false skips it", async () => {
  const engines = ENGINES();
  engines.vllm.warmupFails = true;
  const fs = await installed(engines, "llama");
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.ROLLED_BACK);
  assertMatch(
    fs.host.stderr,
    /vllm failed: healthy, but the warm-up request \(one short completion on http:\/\/127\.0\.0\.1:8081\/v1\/completions\) failed: HTTP 500: \{"error":\{"message":"CUDA error: an illegal memory access"\}\}/,
  );
  assertMatch(fs.host.stderr, /llama serves again, as before/);
  // The rollback warmed llama up too before calling it served.
  assertDeep(fs.completions.map((c) => c.engine), [
    "soulstone-vllm.service",
    "soulstone-llama.service",
  ]);

  // Turned off in lychd.yaml: no completion, and the report has no first-request time.
  const off = await installed(ENGINES(), "llama");
  const text = off.host.text(CONFIG)!;
  assertMatch(text, /^ {2}vllm:\n/m);
  off.host.files.set(CONFIG, {
    data: new TextEncoder().encode(text.replace(/^ {2}vllm:\n/m, "  vllm:\n    warmup: false\n")),
    mode: 0o600,
  });
  assertEquals(await swap(off.host, opts("vllm")), EXIT.OK, off.host.stderr);
  assertDeep(off.completions, []);
  assert(!off.host.stdout.includes("first request"), off.host.stdout);
});

Deno.test("an on-demand swap runs no Podman (the gate's sandbox keeps it out); a swap by hand does", async () => {
  const fs = await installed(ENGINES(), "llama");
  fs.host.clock += 5000;
  fs.host.calls = [];
  const inGate = {} as NonNullable<SwapOptions["inGate"]>;
  assertEquals(await swap(fs.host, opts("vllm", { inGate })), 0, fs.host.stderr);
  assert(fs.host.calls.some((c) => / start soulstone-vllm/.test(c)), fs.host.calls.join("\n"));
  assertDeep(fs.host.calls.filter((c) => c.startsWith("podman")), []);
  fs.host.clock += 5000;
  fs.host.calls = [];
  assertEquals(await swap(fs.host, opts("llama")), 0, fs.host.stderr);
  assert(fs.host.calls.some((c) => c.startsWith("podman ")), fs.host.calls.join("\n"));
});

Deno.test("swap by hand to the engine on demand started: it becomes the boot engine, and a later swap to it is still a no-op, not a restart", async () => {
  const fs = await installed(ENGINES(), "llama");
  fs.host.clock += 5000;
  // On demand swaps without moving the boot engine (a LocalGate stands for the gate; gate:
  // false here, so only that marker matters).
  const inGate = {} as NonNullable<SwapOptions["inGate"]>;
  assertEquals(await swap(fs.host, opts("vllm", { inGate })), 0);
  assertMatch(fs.host.text(CONFIG)!, /^active: llama$/m);
  for (const round of [1, 2]) {
    fs.host.clock += 5000;
    fs.host.stdout = "";
    fs.host.calls = [];
    assertEquals(await swap(fs.host, opts("vllm")), 0, `swap ${round}`);
    assertMatch(fs.host.stdout, /vllm is already active and healthy/, `swap ${round}`);
    const started = fs.host.calls.filter((c) => / (start|restart|stop) /.test(c));
    assertDeep(started, [], `swap ${round} (re)started or stopped an engine`);
    assertMatch(fs.host.text(CONFIG)!, /^active: vllm$/m);
  }
});
