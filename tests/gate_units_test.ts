/**
 * The gate's layout: with `gate:` on, the engines publish on the engine port, lychd-gate.service
 * runs lychd (passing the real `systemd-analyze verify`, its ExecStart decoded word for word),
 * and the harvester scrapes the engine on its own port and the gate on 8081; `gate: false`
 * keeps today's layout. Bad gate settings are refused with the key. The control requests and
 * on-demand scheduling are checked against a real Gate.
 */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { execStartArgv } from "./support/systemd_exec.ts";
import { requireTools } from "./support/tools.ts";
import {
  LYCHD_PROGRAM,
  planFor,
  quadlet,
  securityExposure,
  systemdUnits,
  systemdVerify,
  unitFiles,
  unitValues,
} from "./support/units.ts";
import { resolveConfig } from "../lib/config/load.ts";
import { ConfigError, LychdError } from "../lib/errors.ts";
import { EXIT } from "../lib/exit.ts";
import { Gate } from "../lib/gate/proxy.ts";
import { controlRequest, LocalGate } from "../lib/gate/control.ts";
import { OnDemand } from "../lib/gate/on_demand.ts";
import { gateUnit, resolveEngines } from "../lib/units/model.ts";
import { locations } from "../lib/paths.ts";
import { parse as parseYaml } from "yaml";
import { engineOverrides, type EngineScript, FakeSystemd } from "./support/fake_systemd.ts";
import { init } from "../lib/commands/init.ts";
import {
  apiKeys,
  authorized,
  isLoopback,
  openAfterSwaps,
  sameSecret,
  serves,
} from "../lib/commands/gate.ts";
import { FakeHost } from "./support/fake_host.ts";
import { waitUntil, within } from "./support/wait.ts";
import { swap, swapDefaults, type SwapOptions } from "../lib/commands/swap.ts";
import { stop } from "../lib/commands/stop.ts";

const ignore = requireTools("quadlet", "systemdAnalyze", "podman");
const ON = "gate: true\n";

for (const mode of ["user", "system"] as const) {
  Deno.test({
    name: `gate units, ${mode} mode: engines on 18081, lychd-gate.service verifies, runs lychd`,
    ignore,
    async fn() {
      const plan = planFor(ON, [], mode);
      const q = await quadlet(unitFiles(plan), mode);
      assertEquals(q.stderr, "");
      for (const e of ["vllm", "sglang", "llama"]) {
        const argv = execStartArgv(
          unitValues(q.services[`soulstone-${e}.service`], "Service", "ExecStart")[0],
        );
        const publish = argv[argv.indexOf("--publish") + 1];
        assertMatch(publish, /^127\.0\.0\.1:18081:\d+$/, e);
      }
      const gate = systemdUnits(plan)["lychd-gate.service"];
      assert(gate, "no lychd-gate.service in the plan");
      // systemd-analyze needs the program to exist: the one this test runs under.
      const real = gate.replace(LYCHD_PROGRAM[0], Deno.execPath());
      assertEquals(
        await systemdVerify({ ...q.services, "lychd-gate.service": real }, mode),
        "",
        "systemd-analyze verify printed findings",
      );
      const config = mode === "system"
        ? "/etc/lychd/lychd.yaml"
        : "/home/ada/.config/lychd/lychd.yaml";
      assertDeep(execStartArgv(unitValues(gate, "Service", "ExecStart")[0]), [
        ...LYCHD_PROGRAM,
        "gate",
        ...(mode === "system" ? ["--system"] : []),
        "--config",
        config,
      ]);
      assertDeep(unitValues(gate, "Service", "Restart"), ["always"]);
      assertDeep(unitValues(gate, "Install", "WantedBy"), [
        mode === "system" ? "multi-user.target" : "default.target",
      ]);
      const prom = parseYaml(
        plan.files.find((f) => f.path === "prometheus/prometheus.yml")!.content,
      );
      const targets = Object.fromEntries(
        prom.scrape_configs.map((
          j: { job_name: string; metrics_path: string; static_configs: { targets: string[] }[] },
        ) => [
          j.job_name,
          `${j.static_configs[0].targets[0]}${j.metrics_path}`,
        ]),
      );
      assertDeep(targets, {
        soulstone: "127.0.0.1:18081/metrics",
        "lychd-gate": "127.0.0.1:8081/lychd/metrics",
      });
    },
  });
}

Deno.test({
  name:
    "the system gate runs in systemd's sandbox: one capability (to read), a read-only system, exposure 2.5 at most, on demand too",
  ignore,
  async fn() {
    const cases: [string, string[]][] = [
      [ON, []],
      ["gate: {on_demand: true}\n", ["/var/lib/lychd /etc/containers/systemd /etc/systemd/system"]],
    ];
    for (const [yaml, writes] of cases) {
      const gate = systemdUnits(planFor(yaml, [], "system"))["lychd-gate.service"]
        .replace(LYCHD_PROGRAM[0], Deno.execPath());
      const { exposure, report } = await securityExposure("lychd-gate.service", gate);
      // Before the sandbox (NoNewPrivileges= alone) systemd-analyze said 9.4 UNSAFE; 2.1 and 2.2 now.
      assert(exposure <= 2.5, `exposure ${exposure} for ${yaml}:\n${report}`);
      assertDeep(unitValues(gate, "Service", "CapabilityBoundingSet"), ["CAP_DAC_READ_SEARCH"]);
      assertDeep(unitValues(gate, "Service", "ProtectSystem"), ["strict"]);
      assertDeep(unitValues(gate, "Service", "ReadWritePaths"), writes);
      assertDeep(unitValues(gate, "Service", "PrivateTmp"), ["yes"]);
      assertEquals(await systemdVerify({ "lychd-gate.service": gate }, "system"), "");
    }
    // A user's gate runs as that user, under a manager that cannot apply most of this.
    const user = systemdUnits(planFor(ON, [], "user"))["lychd-gate.service"];
    assertDeep(unitValues(user, "Service", "ProtectSystem"), []);
    assertDeep(unitValues(user, "Service", "CapabilityBoundingSet"), []);
  },
});

Deno.test("the gate's sandbox keeps /tmp when lychd, lychd.yaml or the API keys live there", () => {
  const loc = locations("system", () => undefined);
  const sandboxOf = (program: string, configPath: string, yaml = ON) =>
    gateUnit(resolveConfig(yaml, configPath, []).config, loc, { program: [program], configPath })
      .sandbox!;
  assertEquals(sandboxOf("/usr/local/bin/lychd", "/etc/lychd/lychd.yaml").privateTmp, true);
  assertEquals(sandboxOf("/tmp/checkout/main.ts", "/etc/lychd/lychd.yaml").privateTmp, false);
  assertEquals(sandboxOf("/usr/local/bin/lychd", "/var/tmp/lychd.yaml").privateTmp, false);
  const keys = "gate: {listen: all, api_keys_file: /tmp/keys}\n";
  assertEquals(sandboxOf("/usr/local/bin/lychd", "/etc/lychd/lychd.yaml", keys).privateTmp, false);
  assertEquals(
    gateUnit(
      resolveConfig(ON, "/x.yaml", []).config,
      locations("user", (n) => n === "HOME" ? "/home/ada" : undefined),
      { program: ["/usr/local/bin/lychd"], configPath: "/x.yaml" },
    ).sandbox,
    null,
  );
});

Deno.test("gate: false keeps today's layout: engines on 8081, no gate unit, no gate job", () => {
  const plan = planFor("gate: false\n", [], "user");
  assertDeep(Object.keys(systemdUnits(plan)), []);
  assertMatch(unitFiles(plan)["soulstone-vllm.container"], /^PublishPort=127\.0\.0\.1:8081:8000$/m);
  const prom = plan.files.find((f) => f.path === "prometheus/prometheus.yml")!.content;
  assert(!prom.includes("lychd-gate"), prom);
  assertMatch(prom, /targets: \["127\.0\.0\.1:8081"\]/);
});

Deno.test("the gate is the default layout; its unit changes only with what the gate keeps", () => {
  const gateUnit = (yaml: string | null) =>
    systemdUnits(planFor(yaml, [], "user"))["lychd-gate.service"];
  const bare = gateUnit(null);
  assertMatch(bare, /^ExecStart=\/usr\/local\/bin\/lychd gate --config /m);
  // The defaults written out (what init records in lychd.yaml) are the same settings.
  assertEquals(
    gateUnit(`engines: [vllm, sglang, llama]
active: llama
cartridges:
  vllm: {model: Qwen/Qwen2.5-7B-Instruct}
gate: {engine_port: 18081}
`),
    bare,
  );
  // What the gate does not keep: no restart (a restart cuts the requests in flight).
  assertEquals(gateUnit("harvester: {retention: 3d}\n"), bare);
  // What it keeps: an engine's model (on demand, readiness), its start timeout (the hold).
  assert(gateUnit("cartridges: {vllm: {model: org/other}}\n") !== bare);
  assert(gateUnit("cartridges: {vllm: {start_timeout: 5m}}\n") !== bare);
  assert(gateUnit("gate: {max_held: 8}\n") !== bare);
});

Deno.test("init restarts a running gate only when what the gate keeps changed", async () => {
  const engines = CPU_ENGINES();
  const fs = new FakeSystemd(engines);
  const run = async (extra: { path: string[]; value: unknown }[]) => {
    fs.host.calls = [];
    const code = await init(fs.host, {
      config: {
        system: false,
        configPath: null,
        overrides: [
          ...engineOverrides(engines, "llama", true),
          ...extra.map((o) => ({ ...o, flag: "test" })),
        ],
      },
      dryRun: false,
      force: false,
      reload: true,
    });
    assertEquals(code, 0, fs.host.stderr);
    return fs.host.calls.filter((c) => c.includes("lychd-gate.service") && !c.includes(" show "));
  };
  assertDeep(await run([]), [
    "systemctl --user enable lychd-gate.service",
    "systemctl --user start lychd-gate.service",
  ]);
  fs.activate("lychd-gate.service");
  fs.host.openPorts.add(8081);
  // lychd.yaml changes (the harvester's retention), the gate's unit does not: no restart, which
  // would cut the requests in flight.
  assertDeep(await run([{ path: ["harvester", "retention"], value: "3d" }]), []);
  // What the gate keeps (an engine's start timeout: its hold): a restart.
  assertDeep(await run([{ path: ["cartridges", "vllm", "start_timeout"], value: "5m" }]), [
    "systemctl --user restart lychd-gate.service",
  ]);
});

Deno.test("init waits for the gate it started to answer on 8081, and says why when it does not", async () => {
  const initGate = async (portOpen: (checks: number, fs: FakeSystemd) => boolean) => {
    const fs = new FakeSystemd(CPU_ENGINES());
    let checks = 0;
    fs.host.portOpen = (port) => {
      assertEquals(port, 8081);
      return Promise.resolve(portOpen(++checks, fs));
    };
    const code = await init(fs.host, {
      config: {
        system: false,
        configPath: null,
        overrides: engineOverrides(CPU_ENGINES(), "llama", true),
      },
      dryRun: false,
      force: false,
      reload: true,
    });
    assertEquals(code, 0, fs.host.stderr);
    return { fs, checks };
  };
  // It answers on the third look: init waited for it, then says the gate holds 8081.
  const late = await initGate((checks) => checks >= 3);
  assertEquals(late.checks, 3);
  assertMatch(
    late.fs.host.stdout,
    /Started lychd-gate\.service: lychd holds http:\/\/127\.0\.0\.1:8081/,
  );
  assert(!late.fs.host.stderr.includes("nothing answers"), late.fs.host.stderr);
  // Running, but never listening: init gives up after its 10 s (lychd's clock), and says so.
  const silent = await initGate(() => false);
  assertMatch(
    silent.fs.host.stderr,
    /lychd-gate\.service was started, but nothing answers on http:\/\/127\.0\.0\.1:8081 \(not after 10 s\)/,
  );
  assert(!silent.fs.host.stdout.includes("Started lychd-gate"), silent.fs.host.stdout);
  // It exits right after it started: no waiting out the 10 s; init says what systemd says.
  const dead = await initGate((_, fs) => {
    fs.unit("lychd-gate.service").state = "failed";
    return false;
  });
  assertEquals(dead.checks, 1);
  assertMatch(
    dead.fs.host.stderr,
    /lychd-gate\.service was started, but nothing answers on http:\/\/127\.0\.0\.1:8081 \(it is failed\/failed\)/,
  );
});

Deno.test("gate config: bad settings are refused with their key, nothing rendered", () => {
  const cases: [string, RegExp][] = [
    ["gate: maybe\n", /gate: expected true, false or a mapping/],
    ["gate: {engine_port: 9090}\n", /gate\.engine_port: .*9090 is taken by lychd itself/],
    ["gate: {engine_port: 80}\n", /gate\.engine_port: .*privileged/],
    ["gate: {listen: all}\n", /gate\.listen: .*needs API keys: set gate\.api_keys_file/],
    ["gate: {listen: lan}\n", /gate\.listen: .*not loopback .* or all/],
    [
      'gate: {api_keys_file: "keys\\nExecStart=/bin/sh"}\n',
      /gate\.api_keys_file: .*control character/,
    ],
    ["gate: {max_held: -1}\n", /gate\.max_held: .*not a number of requests/],
    ["gate: {hold_timeout: forever}\n", /gate\.hold_timeout: .*not a duration/],
    ["gate: {colour: red}\n", /gate\.colour: .*unknown key; expected one of: enabled, engine_port/],
  ];
  for (const [yaml, expected] of cases) {
    try {
      resolveConfig(yaml, "/home/ada/.config/lychd/lychd.yaml", []);
      throw new Error(`accepted: ${yaml}`);
    } catch (e) {
      assert(e instanceof ConfigError, `${yaml}: ${e}`);
      assertMatch(e.message, expected);
    }
  }
  const ok = resolveConfig(
    "gate: {listen: all, api_keys_file: /etc/lychd/api-keys, engine_port: 28081}\n",
    "/etc/lychd/lychd.yaml",
    [],
  );
  assertEquals(ok.config.gate.enginePort, 28081);
  assertEquals(ok.config.gate.enabled, true);
});

Deno.test("gate control: close holds, open releases to the named engine, refuse answers 503", async () => {
  const gate = new Gate("http://127.0.0.1:9", { holdTimeoutMs: 5000, maxHeld: 10 });
  gate.open("http://127.0.0.1:9", "vllm");
  const post = (path: string, body: unknown) =>
    controlRequest(
      gate,
      () => "http://127.0.0.1:9",
      0,
      new Request(`http://gate${path}`, {
        method: "POST",
        body: JSON.stringify(body),
      }),
    ).then((r) => r.json());
  const closed = await post("/close", { hold_ms: 2000 });
  assertEquals(closed.open, false);
  const held = gate.handle(new Request("http://127.0.0.1:8081/v1/models"));
  await waitUntil(() => gate.counts().held === 1, "the request to be held");
  assertEquals(gate.counts().held, 1);
  const refused = await post("/refuse", {
    message: "the swap failed",
    swap: { from: "vllm", to: "llama", result: "failed", phases: { drain: 0.1 }, at: 1 },
  });
  assertEquals(refused.lastSwap.result, "failed");
  assertEquals(refused.swaps, 1);
  const r = await held;
  assertEquals(r.status, 503);
  assertMatch((await r.json()).error.message, /the swap failed/);
  assertMatch(
    gate.metrics(),
    /lychd_gate_swaps_total\{from="vllm",to="llama",result="failed",kind="cold"\} 1/,
  );
  assertMatch(gate.metrics(), /lychd_gate_refused_total\{reason="no_engine"\} 1/);
  const opened = await post("/open", { engine: "llama" });
  assertDeep([opened.open, opened.engine], [true, "llama"]);
});

Deno.test("on demand: a request for another model waits for its engine and triggers one swap; residency holds it back", async () => {
  const { config } = resolveConfig(
    "engines: [vllm, sglang]\ngate: {on_demand: true}\ncartridges: {sglang: {model: org/sglang}}\n",
    "/x/lychd.yaml",
    [],
  );
  const engines = resolveEngines(config);
  const upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  const url = `http://127.0.0.1:${upstream.addr.port}`;
  const gate = new Gate(url, { holdTimeoutMs: 5000, maxHeld: 10 });
  gate.open(url, "vllm");
  const swaps: string[] = [];
  // The residency is counted on lychd's clock, which the test moves: how long the machine takes
  // to run the test does not decide when the swap may come.
  let clock = 0;
  const od = new OnDemand(gate, engines, {
    minResidencyMs: 300,
    now: () => clock,
    log: () => {},
    swap: (engine) => {
      swaps.push(engine);
      gate.close();
      gate.open(url, engine);
      return Promise.resolve(true);
    },
  });
  const ask = (model: string) =>
    od.handle(
      new Request("http://127.0.0.1:8081/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json", "content-length": "40" },
        body: JSON.stringify({ model }).padEnd(40),
      }),
    );
  try {
    // For the active engine: straight through.
    assertEquals(await (await ask("Qwen/Qwen2.5-7B-Instruct")).text(), "ok");
    // vllm was just used: sglang's request waits out the residency (300 ms)...
    const waiting = ask(engines[1].model!);
    await waitUntil(
      () => gate.counts().held === 1 || swaps.length > 0,
      "sglang's request to be held",
    );
    assertDeep(swaps, [], "swapped at once, in the residency");
    clock = 299;
    od.schedule();
    assertDeep(swaps, [], "swapped before the residency");
    assertEquals(gate.counts().held, 1);
    // ...and then goes, with no further request needed to trigger the swap.
    clock = 300;
    const r = await within(waiting, "the swap once the residency is over");
    assertEquals([r.status, await r.text()].join(" "), "200 ok");
    assertDeep(swaps, ["sglang"]);
    const listed = await od.models().json();
    assertDeep(listed.data.map((m: { engine: string; loaded: boolean }) => [m.engine, m.loaded]), [
      ["vllm", false],
      ["sglang", true],
    ]);
  } finally {
    await upstream.shutdown();
  }
});

/** Two CPU engines behind the gate under the fake systemd; `inFlight` scripts the drain. */
async function behindGate(inFlight: number[], engines: Record<string, EngineScript>) {
  const fs = new FakeSystemd(engines);
  const code = await init(fs.host, {
    config: {
      system: false,
      configPath: null,
      overrides: engineOverrides(engines, "llama", true),
    },
    dryRun: false,
    force: false,
    reload: true,
  });
  assertEquals(code, 0, fs.host.stderr);
  fs.enginePort = 18081;
  fs.activate("soulstone-llama.service");
  // A user manager's session: the gate's control folder is under XDG_RUNTIME_DIR.
  (fs.host as unknown as { options: { env: unknown } }).options.env = {
    HOME: "/home/ada",
    XDG_RUNTIME_DIR: "/run/user/1000",
  };
  fs.host.stderr = "";
  fs.host.stdout = "";
  const polls = [...inFlight];
  (fs.host as unknown as { options: { control: unknown } }).options.control = (
    method: string,
    path: string,
  ) => {
    if (method === "GET" && path === "/status") {
      const n = polls.length > 1 ? polls.shift()! : polls[0] ?? 0;
      return { status: 200, body: JSON.stringify({ open: true, counts: { inFlight: n } }) };
    }
    return { status: 200, body: "{}" };
  };
  return fs;
}

const swapOpts = (engine: string, extra: Partial<SwapOptions> = {}): SwapOptions => ({
  ...swapDefaults({ system: false, configPath: null, overrides: [] }, engine),
  ...extra,
});

const CPU_ENGINES = (): Record<string, EngineScript> => ({
  llama: { model: "org/llama-gguf:Q4", readyMs: 500, gpu: "cpu" },
  vllm: { model: "org/vllm", readyMs: 800, gpu: "cpu" },
});

Deno.test("swap behind the gate: hold, drain with progress, then open to the new engine with the phases", async () => {
  // The swap looks every 50 ms; a "draining" line at most every 250 ms.
  const fs = await behindGate([3, 3, 3, 3, 3, 3, 3, 1, 1, 0], CPU_ENGINES());
  const code = await swap(fs.host, swapOpts("vllm"));
  assertEquals(code, 0, fs.host.stderr);
  assertMatch(
    fs.host.stderr,
    /llama: draining llama: 3 requests in flight|vllm: draining llama: 3 requests in flight/,
  );
  assertMatch(fs.host.stderr, /draining llama: 1 requests in flight/);
  assert(fs.host.controls.every((c) => c.folder === "/run/user/1000/lychd"));
  const calls = fs.host.controls.map((c) => `${c.method} ${c.path}`);
  assertEquals(calls[0], "GET /status");
  assertEquals(calls[1], "POST /close");
  assertEquals(calls.at(-1), "POST /open");
  // The drain ends before the old engine is stopped.
  const open = fs.host.controls.at(-1)!.body as {
    engine: string;
    swap: { result: string; phases: Record<string, number> };
  };
  assertEquals(open.engine, "vllm");
  assertEquals(open.swap.result, "ok");
  assertDeep(Object.keys(open.swap.phases), ["drain", "stop", "start", "load", "warmup"]);
  assert(open.swap.phases.drain >= 0.4, JSON.stringify(open.swap.phases));
  // Clients waited from the drain's start: the report's total counts the drain.
  const line = fs.host.stdout.match(
    /^vllm ready in ([0-9.]+) s \(drained llama ([0-9.]+) s, old engine stopped ([0-9.]+) s, /,
  );
  assert(line, fs.host.stdout);
  assert(Number(line[1]) >= Number(line[2]) + Number(line[3]), fs.host.stdout);
  // The readiness probe asked the engine on its own port, not the gate.
  assert(fs.host.calls.every((c) => !c.includes("127.0.0.1:8081/")), fs.host.calls.join("\n"));
});

Deno.test("swap behind the gate with nothing in flight: no drain in the report", async () => {
  const fs = await behindGate([0], CPU_ENGINES());
  assertEquals(await swap(fs.host, swapOpts("vllm")), 0, fs.host.stderr);
  assertMatch(fs.host.stdout, /^vllm ready in [0-9.]+ s \(old engine stopped /);
});

Deno.test("swap behind the gate: a failed swap opens the gate to the engine rolled back to; --no-drain skips the wait", async () => {
  const engines = CPU_ENGINES();
  engines.vllm = { ...engines.vllm, readyMs: null };
  const fs = await behindGate([2], engines);
  const code = await swap(fs.host, swapOpts("vllm", { timeoutSec: 2, drain: false }));
  assertEquals(code, 5, fs.host.stderr);
  assertMatch(
    fs.host.stderr,
    /not draining llama \(--no-drain\): its requests in flight are cut off/,
  );
  const open = fs.host.controls.at(-1)!;
  assertEquals(open.path, "/open");
  const body = open.body as { engine: string; swap: { to: string; result: string } };
  assertDeep([body.engine, body.swap.to, body.swap.result], ["llama", "vllm", "rolled-back"]);
});

Deno.test("swap behind the gate: interrupted, it hands the held requests to the target as soon as it serves", async () => {
  const engines = CPU_ENGINES();
  engines.vllm = { ...engines.vllm, readyMs: null };
  const fs = await behindGate([0], engines);
  // SIGTERM while vllm loads: what the signal handler does before lychd exits.
  let exit: Promise<number> | number | null = null;
  const http = fs.http.bind(fs);
  fs.http = (url, body) => {
    if (fs.state("soulstone-vllm.service").state === "active" && exit === null) {
      exit = fs.host.interrupt!("SIGTERM");
    }
    return http(url, body);
  };
  await swap(fs.host, swapOpts("vllm", { timeoutSec: 2 }));
  assertEquals(await exit, 143);
  assertMatch(fs.host.stderr, /lychd swap interrupted \(SIGTERM\)/);
  assertMatch(fs.host.stderr, /the gate holds requests until it serves/);
  const recover = fs.host.controls.find((c) => c.path === "/recover");
  assert(recover, fs.host.controls.map((c) => c.path).join(" "));
  assertDeep(recover.body, { engine: "vllm" });
});

Deno.test("swap behind the gate: a gate that does not run (stop --all) is started first; ready means 8081 serves", async () => {
  const fs = await behindGate([0], CPU_ENGINES());
  fs.stop("lychd-gate.service"); // lychd stop --all
  fs.host.calls.length = 0;
  // The gate answers its control folder only once systemd has started it.
  const answer = (fs.host as unknown as { options: { control: unknown } }).options.control as (
    m: string,
    p: string,
  ) => unknown;
  (fs.host as unknown as { options: { control: unknown } }).options.control = (
    m: string,
    p: string,
  ) => fs.state("lychd-gate.service").state === "active" ? answer(m, p) : { error: "refused" };
  assertEquals(await swap(fs.host, swapOpts("vllm")), 0, fs.host.stderr);
  assertMatch(fs.host.stderr, /the gate was not running: started it/);
  const starts = fs.host.calls.filter((c) => c.includes("start lychd-gate.service"));
  assertEquals(starts.length, 1, fs.host.calls.join("\n"));
  // Started before anything else of the swap happened, and opened to vllm at its end.
  const gateStart = fs.host.calls.findIndex((c) => c.includes("start lychd-gate.service"));
  const engineStart = fs.host.calls.findIndex((c) => c.includes("start soulstone-vllm.service"));
  assert(gateStart >= 0 && gateStart < engineStart, fs.host.calls.join("\n"));
  const open = fs.host.controls.at(-1)!;
  assertEquals(open.path, "/open");
  assertEquals((open.body as { engine: string }).engine, "vllm");
});

Deno.test("swap behind the gate: a gate that will not start fails the swap before any engine changes", async () => {
  const fs = await behindGate([0], CPU_ENGINES());
  (fs.host as unknown as { options: { control: unknown } }).options.control = () => ({
    error: "refused",
  });
  const error = await swap(fs.host, swapOpts("vllm")).then(() => null, (e) => e);
  assert(error instanceof LychdError, String(error));
  assertEquals(error.exitCode, EXIT.NOT_SERVING);
  assertMatch(
    error.message,
    /the gate \(lychd-gate\.service\) was started but did not answer within 60 s/,
  );
  assertEquals(fs.state("soulstone-llama.service").state, "active");
  assertEquals(fs.state("soulstone-vllm.service").state, "inactive");
});

Deno.test("lychd stop behind the gate: the gate is told first, so clients get a 503 at once; --all stops the gate", async () => {
  const fs = await behindGate([0], CPU_ENGINES());
  const config = { system: false, configPath: null, overrides: [] };
  assertEquals(await stop(fs.host, { config, all: false }), 0);
  const told = fs.host.controls.find((c) => c.path === "/stop");
  assert(told, fs.host.controls.map((c) => c.path).join(" "));
  assertMatch((told.body as { message: string }).message, /start one with `lychd swap ENGINE`/);
  // Told before the engine stopped: nothing is held for an engine nobody starts.
  const stopCall = fs.host.calls.findIndex((c) => c.includes(" stop soulstone-"));
  assert(stopCall >= 0, fs.host.calls.join("\n"));
  assertEquals(fs.state("soulstone-llama.service").state, "inactive");
  fs.host.controls.length = 0;
  assertEquals(await stop(fs.host, { config, all: true }), 0);
  assertEquals(fs.host.controls.length, 0, "stop --all talked to a gate it stops");
  assertEquals(fs.state("lychd-gate.service").state, "inactive");
});

Deno.test("swap behind the gate: an exception mid-swap leaves the gate recovering, not closed for its hold", async () => {
  const fs = await behindGate([0], CPU_ENGINES());
  // One systemctl show fails outright after the gate was closed (a D-Bus hiccup, say).
  const run = fs.host.run.bind(fs.host);
  let failed = false;
  fs.host.run = (cmd: string, args: string[]) => {
    if (!failed && cmd === "systemctl" && args.some((a) => a.endsWith(",NRestarts"))) {
      failed = true;
      return Promise.reject(new Error("Failed to connect to bus"));
    }
    return run(cmd, args);
  };
  const error = await swap(fs.host, swapOpts("vllm")).then(() => null, (e) => e);
  assert(error instanceof Error && /Failed to connect to bus/.test(error.message), String(error));
  const paths = fs.host.controls.map((c) => c.path);
  assert(paths.includes("/close"), paths.join(" "));
  assertEquals(paths.at(-1), "/recover", paths.join(" "));
});

Deno.test("gate API keys: a 0600 file of keys, Bearer only, loopback trusted; a file others can read is refused", async () => {
  const { config } = resolveConfig(
    "gate: {listen: all, api_keys_file: /etc/lychd/api-keys}\n",
    "/etc/lychd/lychd.yaml",
    [],
  );
  const host = new FakeHost({ files: { "/etc/lychd/api-keys": "# agents\nkey-one\n\nkey-two\n" } });
  host.files.get("/etc/lychd/api-keys")!.mode = 0o644;
  const refused = await apiKeys(host, config).then(() => "", (e) => (e as Error).message);
  assertMatch(
    refused,
    /api_keys_file \/etc\/lychd\/api-keys is readable by others \(mode 644\): chmod 600/,
  );
  host.files.get("/etc/lychd/api-keys")!.mode = 0o600;
  const keys = (await apiKeys(host, config))!;
  assertDeep([...keys], ["key-one", "key-two"]);
  const req = (auth?: string) =>
    new Request("http://gate/v1/models", auth ? { headers: { authorization: auth } } : {});
  assert(authorized(req("Bearer key-two"), keys));
  assert(!authorized(req("Bearer key-three"), keys));
  assert(!authorized(req("key-one"), keys));
  assert(!authorized(req(), keys));
  assert(isLoopback("127.0.0.1") && isLoopback("::1"));
  assert(!isLoopback("10.0.0.7") && !isLoopback("0.0.0.0"));
  // Loopback only: no keys needed, none read.
  const local = resolveConfig("gate: true\n", "/etc/lychd/lychd.yaml", []).config;
  assertEquals(await apiKeys(host, local), null);
});

Deno.test("gate API keys: compared whole, byte for byte, whatever their lengths", () => {
  assert(sameSecret("k3y-abc", "k3y-abc"));
  for (const other of ["k3y-abd", "k3y-ab", "k3y-abcd", "", "K3Y-ABC"]) {
    assert(!sameSecret(other, "k3y-abc"), other);
    assert(!sameSecret("k3y-abc", other), other);
  }
  const req = (key: string) =>
    new Request("http://x/", { headers: { authorization: `Bearer ${key}` } });
  assert(authorized(req("two"), ["one", "two", "three"]));
  assert(!authorized(req("tw"), ["one", "two", "three"]));
});

Deno.test("the gate opens to an engine that serves an older model than lychd.yaml names, not to one that loads", () => {
  // init changed the model; the running engine still serves the old one until swap restarts it.
  assert(serves("wrong-model"));
  assert(serves("ready"));
  assert(!serves("loading"));
  assert(!serves("down"));
});

Deno.test("a gate started while a swap holds lychd's lock holds requests until the swap opens it", async () => {
  // Two engines that say who they are: the one serving when the gate starts, and the swap's.
  const engine = (name: string) =>
    Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => new Response(name));
  const old = engine("old");
  const next = engine("new");
  const url = (s: Deno.HttpServer<Deno.NetAddr>) => `http://127.0.0.1:${s.addr.port}`;
  let locked = true;
  let looks = 0; // at the lock
  let probes = 0; // of the engine
  const said: string[] = [];
  const host = {
    locked: () => (looks++, Promise.resolve(locked)),
    sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
    err: (t: string) => void said.push(t),
  };
  const start = () => {
    const gate = new Gate(url(old), {
      holdTimeoutMs: 60_000,
      maxHeld: 10,
      serving: () => (probes++, Promise.resolve({ engine: "old" })),
    });
    const opened = openAfterSwaps(host, gate, {
      lockPath: "/var/lib/lychd/lychd.lock",
      holdMs: 60_000,
      swapHoldMs: 90_000,
      upstream: () => url(old),
      running: () => Promise.resolve("old"),
    });
    return { gate, opened };
  };
  const answer = async (gate: Gate) =>
    await (await gate.handle(new Request("http://127.0.0.1:8081/v1/models"))).text();
  try {
    // Restarted mid-swap: "old" still serves, but the swap is about to stop it.
    const a = start();
    const held = answer(a.gate);
    await waitUntil(() => a.gate.counts().held === 1, "the request to be held");
    await waitUntil(() => looks >= 3, "the gate to look at the lock again");
    // Waiting for the swap: "old" was never probed, so never opened to.
    assertDeep([probes, a.gate.counts().held], [0, 1]);
    a.gate.open(url(next), "new"); // the swap's /open
    locked = false;
    await a.opened;
    assertEquals(await held, "new");
    assertMatch(said.join(""), /a swap is under way: holding requests/);
    assertEquals(a.gate.engine(), "new");
    a.gate.dispose();

    // A swap that ended without opening it (it died): the gate opens to what serves.
    locked = true;
    const b = start();
    const orphan = answer(b.gate);
    await waitUntil(() => b.gate.counts().held === 1, "the request to be held");
    locked = false;
    await b.opened;
    assertEquals(await orphan, "old");
    b.gate.dispose();

    // No swap under way: it opens to the engine that serves, as soon as it is probed.
    const c = start();
    await c.opened;
    assertEquals(await answer(c.gate), "old");
    c.gate.dispose();
  } finally {
    await Promise.all([old.shutdown(), next.shutdown()]);
  }
});

Deno.test("a starting gate keeps what it is told while it looks (a swap's close, lychd stop), and on demand is asked again", async () => {
  const host = {
    locked: () => Promise.resolve(false),
    sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
    err: () => {},
  };
  const start = (told: (gate: Gate) => void) => {
    const gate = new Gate("http://127.0.0.1:9", {
      holdTimeoutMs: 60_000,
      maxHeld: 10,
      serving: () => Promise.resolve({ engine: "old" }),
    });
    let asked = 0;
    gate.onHold = () => void asked++;
    let answer: ((engine: string | null) => void) | null = null;
    const opened = openAfterSwaps(host, gate, {
      lockPath: "/var/lib/lychd/lychd.lock",
      holdMs: 60_000,
      swapHoldMs: 90_000,
      upstream: () => "http://127.0.0.1:9",
      // systemctl show, as slow as it likes: the gate is told something meanwhile.
      running: () => new Promise<string | null>((r) => answer = r).then((e) => (told(gate), e)),
    });
    const reply = async (engine: string | null) => {
      await waitUntil(() => answer !== null, "the gate to ask systemd what runs");
      answer!(engine);
      await opened;
    };
    return { gate, reply, asked: () => asked };
  };
  // lychd stop while it asked systemd: it stays stopped, not recovering to the old engine.
  const stopped = start((g) => g.stop("nothing is active: lychd stop"));
  await stopped.reply("old");
  assertEquals(stopped.gate.stopped(), "nothing is active: lychd stop");
  assertDeep([stopped.gate.isOpen(), stopped.gate.target()], [false, null]);

  // A swap's close meanwhile: still closed for the swap, not probing the old engine.
  const closed = start((g) => g.close(30_000));
  await closed.reply("old");
  assertDeep([closed.gate.closedBySwap(), closed.gate.target()], [true, null]);
  closed.gate.dispose();

  // Nothing said meanwhile: it recovers, and on demand decides again for what it held.
  const plain = start(() => {});
  await plain.reply("old");
  assertEquals(plain.gate.target(), "old");
  assert(plain.asked() >= 1, "on demand was not asked again");
  plain.gate.shutdown();
  plain.gate.dispose();
});

Deno.test("an on-demand swap's in-process gate answers like a gone one once the gate is told to stop", async () => {
  const gate = new Gate("http://127.0.0.1:9", { holdTimeoutMs: 1000, maxHeld: 4 });
  const local = new LocalGate(gate, () => "http://127.0.0.1:9", 0);
  assertEquals((await local.status())?.open, true);
  assertEquals(await local.close(1000), true);
  gate.shutdown();
  // A swap that finds it so neither drains on, starts the gate again, nor waits to open it.
  assertEquals(await local.status(), null);
  assertEquals(await local.open("vllm"), false);
  assertEquals(gate.isOpen(), false);
  gate.dispose();
});
