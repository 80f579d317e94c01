/**
 * The warm swap's decisions on the fake systemd (docs/warm-swaps.md), with vLLM's sleep routes
 * answered per engine port: the one awake is put to sleep and the target woken; on NVIDIA the GPU
 * check (which wants no process on the GPU) is not run while engines asleep hold their CUDA
 * context, and a cold target stops every engine before it; a sleep and a wake that both fail end
 * in a restart of the target, not a wait for the start timeout. Some of these cases were found by
 * a review of the first version (a warm swap on NVIDIA rolled back every time; a wake that failed
 * after a failed sleep waited 900 s).
 */
import { swap, swapDefaults } from "../lib/commands/swap.ts";
import { status } from "../lib/commands/status.ts";
import { init } from "../lib/commands/init.ts";
import { EXIT } from "../lib/exit.ts";
import type { HttpResult, RunResult } from "../lib/host.ts";
import { FakeSystemd } from "./support/fake_systemd.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";

const SETUP = { system: false, configPath: null, overrides: [] };
const PORT: Record<number, string> = { 18082: "vllm", 18083: "alpha", 18081: "llama" };
const ENGINES = ["vllm", "alpha", "llama"];

interface Options {
  failSleep?: boolean;
  failWake?: boolean;
  gpu?: string;
  /**
   * nvidia-smi answers from a ledger: a process (PID 4000 + its index in ENGINES, in its unit's
   * cgroup) for every engine that runs, 20000 MiB awake, 600 asleep (its CUDA context); and a
   * process that is not lychd's, PID 9999, holding `foreignMiB` (default none).
   */
  smi?: boolean;
  foreignMiB?: number;
  /** Hazard: this engine answers /sleep and says it sleeps, yet keeps its GPU memory. */
  keepsMemory?: string;
  /** alpha speaks SGLang's routes (sleep_api: sglang) rather than vLLM's. */
  alphaSglang?: boolean;
  /** llama on the host's network (its unit says its port with ExposeHostPort=). */
  llamaHost?: boolean;
}

async function warmHost(awake: string, asleepToo: string[], o: Options = {}) {
  const fs = new FakeSystemd(
    Object.fromEntries(ENGINES.map((e) => [e, { model: `org/${e}`, readyMs: 500, gpu: o.gpu }])),
    {},
    null,
  );
  const flag = (path: string[], value: unknown) => ({ path, value, flag: "test" });
  const overrides = [
    flag(["engines"], ENGINES),
    flag(["active"], awake),
    flag(["cartridges", "vllm", "model"], "org/vllm"),
    flag(["cartridges", "vllm", "sleep"], 1),
    flag(["cartridges", "alpha", "image"], "docker.io/vllm/vllm-openai:v0.33.0"),
    flag(["cartridges", "alpha", "port"], 8000),
    flag(["cartridges", "alpha", "model"], "org/alpha"),
    flag(["cartridges", "alpha", "sleep"], 1),
    flag(["cartridges", "alpha", "sleep_api"], o.alphaSglang ? "sglang" : "vllm"),
    flag(["cartridges", "alpha", "args"], ["org/alpha"]),
    flag(["cartridges", "llama", "model"], "org/llama"),
    ...(o.llamaHost ? [flag(["cartridges", "llama", "network"], "host")] : []),
    ...(o.gpu ? ENGINES.map((e) => flag(["cartridges", e, "gpu"], o.gpu)) : []),
  ];
  const code = await init(fs.host, {
    config: { ...SETUP, overrides },
    dryRun: false,
    force: false,
    reload: true,
  });
  assertEquals(code, 0, fs.host.stderr);
  const asleep = new Set<string>(asleepToo);
  // Each engine's processes, as systemctl status lists them: conmon and the engine.
  for (const [i, e] of ENGINES.entries()) {
    fs.unitPids.set(`soulstone-${e}.service`, { conmon: 3000 + i, engine: [4000 + i] });
  }
  for (const e of [awake, ...asleepToo]) fs.activate(`soulstone-${e}.service`);
  // SGLang has no route that says it sleeps: lychd's mark does (as a swap would have set it).
  if (o.alphaSglang && asleepToo.includes("alpha")) fs.environment.set("LYCHD_ASLEEP_ALPHA", "1");
  const running = (e: string) => fs.state(`soulstone-${e}.service`).state === "active";
  fs.extraPrograms = (program): RunResult | null => {
    if (program !== "nvidia-smi" || !o.smi) return null;
    const apps = ENGINES.filter(running).map((e) =>
      `${4000 + ENGINES.indexOf(e)}, python3, ${
        asleep.has(e) && e !== o.keepsMemory ? 600 : 20000
      } MiB`
    );
    if (o.foreignMiB) apps.push(`9999, python3, ${o.foreignMiB} MiB`);
    return {
      code: 0,
      stdout: `pid, process_name, used_gpu_memory [MiB]\n${apps.join("\n")}\n`,
      stderr: "",
    };
  };
  const stop = fs.stop.bind(fs);
  fs.stop = (name: string) => {
    asleep.delete(name.replace(/^soulstone-|\.service$/g, ""));
    return stop(name);
  };
  // Every engine on its own port (the fake's own http serves one engine port): healthy as soon
  // as it runs, its model listed, and the sleep routes of the two that sleep: vLLM's, or for
  // alpha with alphaSglang SGLang's (which has no /is_sleeping).
  const ROUTES = {
    vllm: { sleep: "/sleep", wake: "/wake_up", body: "" },
    sglang: {
      sleep: "/release_memory_occupation",
      wake: "/resume_memory_occupation",
      body: '{"success":true}',
    },
  };
  fs.http = (url: string): HttpResult => {
    // Recorded with the programs run, in order: "http http://127.0.0.1:18083/sleep?level=1".
    fs.host.calls.push(`http ${url}`);
    const u = new URL(url);
    const name = PORT[Number(u.port)];
    if (!name || !running(name)) return { error: "refused" };
    const api = name === "llama" ? null : name === "alpha" && o.alphaSglang ? "sglang" : "vllm";
    const routes = api ? ROUTES[api] : null;
    switch (u.pathname) {
      case routes?.sleep:
        if (o.failSleep) return { status: 500, body: "boom (the scheduler is not idle)" };
        asleep.add(name);
        return { status: 200, body: routes!.body };
      case routes?.wake:
        if (o.failWake) return { status: 500, body: "boom" };
        asleep.delete(name);
        return { status: 200, body: routes!.body };
      case "/is_sleeping":
        return api === "vllm"
          ? { status: 200, body: JSON.stringify({ is_sleeping: asleep.has(name) }) }
          : { status: 404, body: "" };
      case ROUTES.vllm.sleep:
      case ROUTES.vllm.wake:
      case ROUTES.sglang.sleep:
      case ROUTES.sglang.wake:
        return { status: 404, body: "" };
      case "/v1/models":
        return { status: 200, body: JSON.stringify({ data: [{ id: `org/${name}` }] }) };
      case "/v1/completions":
      case "/v1/chat/completions":
        // vllm #45268: a request while asleep hangs.
        return asleep.has(name)
          ? { error: "timeout (sent to an engine asleep)" }
          : { status: 200, body: '{"choices":[{"text":" there","index":0}]}' };
    }
    return { status: 200, body: '{"status":"ok"}' };
  };
  fs.host.calls = [];
  fs.host.stdout = "";
  fs.host.stderr = "";
  return { fs, asleep, running, overrides };
}

const units = (calls: string[]) =>
  calls.filter((c) => /^systemctl .*(start|stop|restart) soulstone/.test(c))
    .map((c) => c.replace(/^systemctl (--user )?/, ""));

Deno.test("warm swap: the engine awake goes to sleep, the one asleep wakes; nothing starts or stops", async () => {
  const { fs, asleep, running } = await warmHost("vllm", ["alpha"], { gpu: "cpu" });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep([...asleep], ["vllm"]);
  assertDeep(ENGINES.filter(running), ["vllm", "alpha"]);
  assertDeep(units(fs.host.calls), []);
  assertMatch(fs.host.stdout, /alpha ready in .*old engine asleep .*woken/);
});

Deno.test("warm swap on NVIDIA: engines asleep stay listed by nvidia-smi; the swap does not roll back", async () => {
  const { fs, asleep } = await warmHost("vllm", ["alpha"], { smi: true });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep([...asleep], ["vllm"]);
  assertMatch(fs.host.stderr, /no GPU check before the start with engines asleep/);
});

Deno.test("warm swap on NVIDIA: an engine that says it sleeps but keeps its GPU memory is stopped", async () => {
  const { fs, asleep, running } = await warmHost("vllm", ["alpha"], {
    smi: true,
    keepsMemory: "vllm",
  });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertMatch(
    fs.host.stderr,
    /vllm did not go to sleep \(it said so, but its processes still hold 20000 MiB on the GPU, of 20000 MiB before\): stopping it/,
  );
  assertDeep(ENGINES.filter(running), ["alpha"]);
  assertDeep([...asleep], []);
  // The same swap with an engine that gives its memory back keeps it asleep (20000 MiB before,
  // 600 after), though another workload holds 40000 MiB on the GPU the whole time.
  const ok = await warmHost("vllm", ["alpha"], { smi: true, foreignMiB: 40000 });
  assertEquals(await swap(ok.fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, ok.fs.host.stderr);
  assertDeep([...ok.asleep], ["vllm"]);
  assert(!/did not go to sleep/.test(ok.fs.host.stderr), ok.fs.host.stderr);
});

Deno.test("cold swap on NVIDIA beside engines asleep: every engine stops before the GPU check", async () => {
  const { fs, running } = await warmHost("vllm", ["alpha"], { smi: true });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "llama")), EXIT.OK, fs.host.stderr);
  assertDeep(ENGINES.filter(running), ["llama"]);
  const calls = units(fs.host.calls);
  const checked = fs.host.calls.findIndex((c) => c.startsWith("nvidia-smi"));
  assert(checked > 0, fs.host.calls.join("\n"));
  assertDeep(calls.slice(0, 1), ["stop soulstone-vllm.service soulstone-alpha.service"]);
});

Deno.test("warm swap: a sleep and a wake that both fail end in a stop and a restart, not the start timeout", async () => {
  // NVIDIA without nvidia-smi answering: the first version stopped vllm for the GPU check, then
  // sent alpha (asleep, active) a `start`, which does nothing, and waited 900 s.
  const { fs, running } = await warmHost("vllm", ["alpha"], { failSleep: true, failWake: true });
  const t0 = fs.host.clock;
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assert(fs.host.clock - t0 < 60_000, `took ${(fs.host.clock - t0) / 1000} s`);
  assertDeep(units(fs.host.calls), [
    "stop soulstone-vllm.service",
    "restart soulstone-alpha.service",
  ]);
  assertDeep(ENGINES.filter(running), ["alpha"]);
  assertMatch(fs.host.stderr, /vllm did not go to sleep .*: stopping it/);
  assertMatch(fs.host.stderr, /alpha did not wake .*: restarting it/);
});

Deno.test("the marks that keep an engine asleep from a restart: set while it sleeps, gone once it wakes or stops", async () => {
  const { fs } = await warmHost("vllm", [], { gpu: "cpu" });
  const marks = () => [...fs.environment].filter(([, v]) => v !== "").map(([k]) => k);
  // alpha is stopped: it starts, and vllm sleeps.
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep(marks(), ["LYCHD_ASLEEP_VLLM"]);
  // Set before /sleep is sent: a crash on the way to sleep is covered too.
  const set = fs.host.calls.findIndex((c) => c.includes("set-environment LYCHD_ASLEEP_VLLM=1"));
  const sleep = fs.host.calls.findIndex((c) => c.includes(":18082/sleep"));
  assert(set >= 0 && set < sleep, fs.host.calls.join("\n"));
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "vllm")), EXIT.OK, fs.host.stderr);
  assertDeep(marks(), ["LYCHD_ASLEEP_ALPHA"]);
  // Cold, to an engine that does not sleep: every engine stops, no mark is left behind; the
  // swap back to one that slept starts it (a mark left would have its start skipped).
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "llama")), EXIT.OK, fs.host.stderr);
  assertDeep(marks(), []);
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep(fs.skippedStarts, []);
});

Deno.test("a sleep that fails: the engine is stopped and keeps no mark", async () => {
  const { fs } = await warmHost("vllm", ["alpha"], { failSleep: true, gpu: "cpu" });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep([...fs.environment].filter(([, v]) => v !== ""), []);
});

Deno.test("warm swap with an engine that speaks SGLang's routes: resumed, released, told asleep by its mark", async () => {
  const { fs, asleep, running } = await warmHost("vllm", ["alpha"], {
    gpu: "cpu",
    alphaSglang: true,
  });
  const asked = (path: string) => fs.host.calls.some((c) => c.startsWith(`http ${path}`));
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "alpha")), EXIT.OK, fs.host.stderr);
  assertDeep([...asleep], ["vllm"]);
  assert(asked("http://127.0.0.1:18083/resume_memory_occupation"), fs.host.calls.join("\n"));
  // Its mark goes only once it answered the resume: cut off before, it must still read asleep.
  const resumed = fs.host.calls.findIndex((c) => c.includes("/resume_memory_occupation"));
  const lifted = fs.host.calls.findIndex((c) => /unset-environment .*LYCHD_ASLEEP_ALPHA/.test(c));
  assert(resumed >= 0 && lifted > resumed, fs.host.calls.join("\n"));
  assertMatch(fs.host.stdout, /alpha ready in .*woken/);
  await status(fs.host, { config: SETUP, json: false });
  assertMatch(fs.host.stdout, /vllm\s+active \(asleep, level 1\)/);
  // And back: alpha released, its mark set, so status and the next swap know it sleeps.
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "vllm")), EXIT.OK, fs.host.stderr);
  assertDeep([...asleep], ["alpha"]);
  assert(asked("http://127.0.0.1:18083/release_memory_occupation"), fs.host.calls.join("\n"));
  assertEquals(fs.environment.get("LYCHD_ASLEEP_ALPHA"), "1");
  fs.host.stdout = "";
  await status(fs.host, { config: SETUP, json: false });
  assertMatch(fs.host.stdout, /alpha\s+active \(asleep, level 1\)/);
  assertDeep(ENGINES.filter(running), ["vllm", "alpha"]);
  assertDeep(units(fs.host.calls), []);
});

Deno.test("SGLang's release refused (busy): the engine is stopped, its mark lifted, the swap goes on", async () => {
  const { fs, running } = await warmHost("alpha", ["vllm"], {
    gpu: "cpu",
    alphaSglang: true,
    failSleep: true,
  });
  assertEquals(await swap(fs.host, swapDefaults(SETUP, "vllm")), EXIT.OK, fs.host.stderr);
  assertMatch(fs.host.stderr, /alpha did not go to sleep \(\/release_memory_occupation: 500 /);
  assertDeep(ENGINES.filter(running), ["vllm"]);
  assertEquals(fs.environment.get("LYCHD_ASLEEP_ALPHA"), undefined);
});

Deno.test("marks match what runs after a swap that failed early, and after any swap", async () => {
  // alpha crashed asleep (its restart skipped: inactive, marked); the cold swap to llama fails
  // its GPU check (a process that is not lychd's), with no rollback: an early return.
  const { fs } = await warmHost("vllm", [], { smi: true, foreignMiB: 40000 });
  fs.environment.set("LYCHD_ASLEEP_ALPHA", "1");
  const code = await swap(fs.host, { ...swapDefaults(SETUP, "llama"), rollback: false });
  assertEquals(code, EXIT.NOT_SERVING, fs.host.stderr);
  assertDeep([...fs.environment].filter(([, v]) => v !== ""), []);
  // reconcileMarks on its own: one running asleep without its mark gets it (it slept under an
  // older lychd, or someone unset it); one running awake loses it.
  const { reconcileMarks } = await import("../lib/sleep.ts");
  const { resolveConfig } = await import("../lib/config/load.ts");
  const { resolveEngines } = await import("../lib/units/model.ts");
  const w = await warmHost("alpha", ["vllm"], { gpu: "cpu" });
  // alpha is the one awake: a mark on it would skip systemd's restart of the engine that serves.
  w.fs.environment.set("LYCHD_ASLEEP_ALPHA", "1");
  const text = new TextDecoder().decode(
    (await w.fs.host.readFile("/home/ada/.config/lychd/lychd.yaml"))!,
  );
  const engines = resolveEngines(resolveConfig(text, "lychd.yaml", []).config);
  await reconcileMarks(w.fs.host, ["--user"], engines.filter((e) => e.sleep !== null));
  assertDeep([...w.fs.environment].filter(([, v]) => v !== ""), [["LYCHD_ASLEEP_VLLM", "1"]]);
});

Deno.test("init that would move the port of an engine that runs: refused, nothing written; --force stops it", async () => {
  const { fs, running, overrides } = await warmHost("vllm", ["alpha"], { gpu: "cpu" });
  // Reordered, the two that sleep swap ports (18082 <-> 18083): the gate would send vllm's
  // requests to alpha, asleep (a request to one asleep hangs).
  const reordered = overrides.map((f) =>
    f.path[0] === "engines" ? { ...f, value: ["alpha", "vllm", "llama"] } : f
  );
  const unit = "/home/ada/.config/containers/systemd/soulstone-vllm.container";
  const before = new TextDecoder().decode((await fs.host.readFile(unit))!);
  const options = { config: { ...SETUP, overrides: reordered }, dryRun: false, reload: true };
  let refused = "";
  try {
    await init(fs.host, { ...options, force: false });
  } catch (e) {
    refused = (e as Error).message;
  }
  assertMatch(
    refused,
    /would move engines that run to other ports: alpha 18083 -> 18082, vllm 18082 -> 18083 .*Nothing was written/,
  );
  assertEquals(new TextDecoder().decode((await fs.host.readFile(unit))!), before);
  assertDeep(ENGINES.filter(running), ["vllm", "alpha"]);
  // --force: written, and both stopped rather than reached on the wrong port.
  assertEquals(await init(fs.host, { ...options, force: true }), EXIT.OK, fs.host.stderr);
  assertMatch(
    fs.host.stdout,
    /Stopped soulstone-alpha\.service soulstone-vllm\.service: alpha's port moved from 18083 to 18082, vllm's port moved from 18082 to 18083/,
  );
  assertDeep(ENGINES.filter(running), []);
  assertMatch(
    new TextDecoder().decode((await fs.host.readFile(unit))!),
    /PublishPort=127\.0\.0\.1:18083:/,
  );
});

for (const llamaHost of [false, true]) {
  Deno.test(
    `init that turns the gate off while an engine runs behind it: refused (it would move to 8081; ${
      llamaHost ? "host" : "private"
    } network)`,
    async () => {
      const { fs, overrides } = await warmHost("llama", [], { gpu: "cpu", llamaHost });
      let refused = "";
      try {
        await init(fs.host, {
          config: {
            ...SETUP,
            overrides: [
              ...overrides,
              // Engines that sleep need the gate: those two are back to stopping.
              ...["vllm", "alpha"].map((e) => ({
                path: ["cartridges", e, "sleep"],
                value: false,
                flag: "test",
              })),
              { path: ["gate"], value: false, flag: "test" },
            ],
          },
          dryRun: false,
          reload: true,
          force: false,
        });
      } catch (e) {
        refused = (e as Error).message;
      }
      assertMatch(
        refused,
        /would move engines that run to other ports: llama 18081 -> 8081 \(gate, /,
      );
    },
  );
}

Deno.test("status: the active engine is the one awake; one asleep says so", async () => {
  const { fs } = await warmHost("vllm", ["alpha"], { gpu: "cpu" });
  // At level 1 the weights sit in host RAM: status says how much the unit holds.
  fs.memoryCurrent.set("soulstone-alpha.service", 3 * 2 ** 30);
  await status(fs.host, { config: SETUP, json: false });
  assertMatch(
    fs.host.stdout,
    /alpha\s+active \(asleep, level 1\)\s*\n\s+memory 3\.2 GB \(its unit's, page cache included\)/,
  );
  fs.host.stdout = "";
  await status(fs.host, { config: SETUP, json: true });
  const report = JSON.parse(fs.host.stdout);
  assertEquals(report.active, "vllm");
  assertDeep(report.engines.map((e: { asleep: number | null }) => e.asleep), [null, 1, null]);
  assertDeep(report.engines.map((e: { memoryBytes: number | null }) => e.memoryBytes), [
    null,
    3 * 2 ** 30,
    null,
  ]);
});

Deno.test("the gate refuses the engines' control routes (403), from any client; others go through", async () => {
  const { Gate } = await import("../lib/gate/proxy.ts");
  const seen: string[] = [];
  const engine = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (r) => {
    seen.push(new URL(r.url).pathname);
    return Response.json({ ok: true });
  });
  const gate = new Gate(`http://127.0.0.1:${engine.addr.port}`, {
    holdTimeoutMs: 1000,
    maxHeld: 4,
  });
  try {
    const paths = [
      "/sleep?level=1",
      "/wake_up",
      "/collective_rpc",
      "/%73leep",
      "//sleep/",
      "/is_sleeping",
    ];
    for (const path of paths) {
      for (const client of ["127.0.0.1", "203.0.113.9"]) {
        const r = await gate.handle(
          new Request(`http://lychd${path}`, {
            method: "POST",
            body: '{"method":"reload_weights"}',
          }),
          { client },
        );
        assertEquals(r.status, 403, `${path} from ${client}`);
        assertEquals((await r.json()).error.type, "invalid_request_error");
      }
    }
    const ok = await gate.handle(new Request("http://lychd/v1/models"), { client: "127.0.0.1" });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
    assertDeep(seen, ["/v1/models"]);
  } finally {
    gate.dispose();
    await engine.shutdown();
  }
});
