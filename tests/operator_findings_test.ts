/**
 * What an operator hit (issue: wrong results found by review and by a real llama.cpp server),
 * each as a test that failed before its fix: on systemd in miniature (FakeSystemd, which reads
 * Conflicts= and the stop timeout from the unit files) and on the real Host where it matters.
 */
import { init } from "../lib/commands/init.ts";
import { status } from "../lib/commands/status.ts";
import { swap, swapDefaults, type SwapOptions } from "../lib/commands/swap.ts";
import type { Override } from "../lib/config/yaml.ts";
import { LychdError } from "../lib/errors.ts";
import { EXIT } from "../lib/exit.ts";
import { denoHost } from "../lib/host.ts";
import { locations } from "../lib/paths.ts";
import { printable } from "../lib/text.ts";
import { freePort } from "./support/ports.ts";
import { assert, assertDeep, assertEquals, assertMatch, assertRejects } from "./support/assert.ts";
import {
  engineOverrides,
  type EngineScript,
  FakeSystemd,
  installedSystemd,
} from "./support/fake_systemd.ts";

const CONFIG = "/home/ada/.config/lychd/lychd.yaml";
const setup = { system: false, configPath: null, overrides: [] as Override[] };

function engines(): Record<string, EngineScript> {
  return {
    llama: { model: "org/llama-gguf:Q4", readyMs: 500 },
    vllm: { model: "Qwen/Qwen2.5-7B-Instruct", readyMs: 3000 },
    sglang: { model: "org/sglang", readyMs: 800 },
  };
}

const overridesFor = engineOverrides;
const installed = installedSystemd;

function opts(engine: string, extra: Partial<SwapOptions> = {}): SwapOptions {
  return { ...swapDefaults(setup, engine), ...extra };
}

Deno.test("12: an engine that crashes at start is a failed swap within seconds, not after the start timeout", async () => {
  const e = engines();
  e.vllm = { ...e.vllm, readyMs: null, dieMs: 2000, restarts: true };
  const fs = await installed(e, "llama");
  const t0 = fs.host.clock;
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.ROLLED_BACK, fs.host.stderr);
  assertMatch(fs.host.stderr, /vllm failed: the engine exited with status 1 while starting/);
  assertMatch(fs.host.stderr, /llama serves again, as before/);
  // The fake clock: seconds, not the 15-minute start timeout.
  assert(fs.host.clock - t0 < 10_000, `took ${fs.host.clock - t0} ms`);
  assertEquals(fs.state("soulstone-vllm.service").state, "inactive");
  assertEquals(fs.state("soulstone-llama.service").state, "active");
});

Deno.test("13: the running engine's unit changed: init says so, and swap restarts it with the change", async () => {
  const e = engines();
  const fs = await installed(e, "llama");
  fs.host.clock += 60_000;
  // A new model for the engine that serves, through init.
  e.llama.model = "org/other-gguf:Q8";
  const r = await init(fs.host, {
    config: { ...setup, overrides: overridesFor(e, "llama") },
    dryRun: false,
    force: false,
    reload: true,
  });
  assertEquals(r, EXIT.OK, fs.host.stderr);
  assertMatch(
    fs.host.stdout,
    /soulstone-llama\.service still runs with its old unit: `lychd swap llama` restarts it/,
  );
  fs.host.clock += 1000;
  fs.host.stdout = "";
  assertEquals(await swap(fs.host, opts("llama", { timeoutSec: 30 })), EXIT.OK, fs.host.stderr);
  assertRestarted(fs, "llama");
  assertMatch(fs.host.stdout, /^llama ready in [0-9.]+ s \(stopped [0-9.]+ s, /);
  // Swapping to it again now is the no-op it should be.
  fs.host.stdout = "";
  assertEquals(await swap(fs.host, opts("llama")), EXIT.OK);
  assertMatch(fs.host.stdout, /llama is already active and healthy \(serves org\/other-gguf:Q8\)/);
});

Deno.test("13: lychd.yaml edited by hand, then swap to the running engine: restarted, not left stale", async () => {
  const e = engines();
  const fs = await installed(e, "llama");
  fs.host.clock += 60_000;
  const text = fs.host.text(CONFIG)!.replace("org/llama-gguf:Q4", "org/edited-gguf:Q5");
  await fs.host.writeFileAtomic(CONFIG, new TextEncoder().encode(text), 0o600);
  e.llama.model = "org/edited-gguf:Q5";
  assertEquals(await swap(fs.host, opts("llama", { timeoutSec: 30 })), EXIT.OK, fs.host.stderr);
  assertRestarted(fs, "llama");
  // Only the boot engine moving ([Install]) is no reason to restart: swap back and forth.
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
  fs.host.calls = [];
  assertEquals(await swap(fs.host, opts("llama")), EXIT.OK, fs.host.stderr);
  assert(!fs.host.calls.some((c) => c.includes(" restart ")), fs.host.calls.join("\n"));
});

Deno.test("18: stop_timeout lowered while the engine runs: swap stops it with the new one, not systemd's kill", async () => {
  const e = engines();
  e.vllm.stuckStopMs = 120_000;
  const fs = await installed(e, "vllm");
  // The running container was created with vLLM's 30 s; the user lowers it to 2 s.
  const before = fs.host.text(CONFIG)!;
  const text = before.replace(/(\n {2}vllm:\n {4}model: [^\n]+\n)/, "$1    stop_timeout: 2s\n");
  assert(text !== before, "stop_timeout was not added to lychd.yaml");
  await fs.host.writeFileAtomic(CONFIG, new TextEncoder().encode(text), 0o600);
  assertEquals(
    await init(fs.host, { config: setup, dryRun: false, force: false, reload: true }),
    EXIT.OK,
    fs.host.stderr,
  );
  assertEquals(await swap(fs.host, opts("sglang")), EXIT.OK, fs.host.stderr);
  assert(
    fs.host.calls.includes("podman stop --time 2 soulstone-vllm"),
    fs.host.calls.join("\n"),
  );
  assertMatch(fs.host.stdout, /old engine stopped 2\.\d s \(killed\)/);
});

Deno.test("3: progress is drawn in place only when stderr, its stream, is a terminal", async () => {
  for (const [terminals, drawn] of [[["stdout"], false], [["stderr"], true]] as const) {
    const fs = await installed(engines(), "llama");
    fs.host.terminals = new Set(terminals);
    assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
    assertEquals(fs.host.stderr.includes("\r\x1b[2K"), drawn, JSON.stringify(terminals));
  }
});

Deno.test("10, 19: the engine's journal is shown without control characters or blank lines", async () => {
  const e = engines();
  e.vllm.readyMs = null;
  const journal =
    "\x1b[2J\x1b[31mboom\x1b[0m: model \x07not found\n\nsecond\tline\n\n\x1b]0;title\x07third\n";
  const fs = new FakeSystemd(
    e,
    {},
    null,
    (program) => program === "journalctl" ? { code: 0, stdout: journal, stderr: "" } : null,
  );
  assertEquals(
    await init(fs.host, {
      config: { ...setup, overrides: overridesFor(e, "llama") },
      dryRun: false,
      force: false,
      reload: true,
    }),
    EXIT.OK,
  );
  fs.activate("soulstone-llama.service");
  assertEquals(await swap(fs.host, opts("vllm", { timeoutSec: 5 })), EXIT.ROLLED_BACK);
  // deno-lint-ignore no-control-regex
  assert(!/[\x00-\x08\x0b-\x1f\x7f]/.test(fs.host.stderr), JSON.stringify(fs.host.stderr));
  assertMatch(fs.host.stderr, /\| boom: model not found\n {2}\| second\tline\n {2}\| third\n/);
  assertEquals(printable("\x1b[1;32mok\x1b[0m\r"), "ok");
});

Deno.test("14: a model outside lychd's read permission is unknown, never MISSING", async () => {
  const e = engines();
  e.llama.model = "/models/x.gguf";
  const fs = await installed(e, "llama");
  fs.host.diskUsage = (path: string) =>
    path.startsWith("/models/")
      ? Promise.reject(new Deno.errors.NotCapable(`Requires read access to "${path}"`))
      : Promise.resolve(null);
  await status(fs.host, { config: setup, json: false });
  assertMatch(
    fs.host.stdout,
    /model \/models\/x\.gguf \[unknown \(outside lychd's read permission\)\]/,
  );
  assert(!/x\.gguf \[MISSING\]/.test(fs.host.stdout));
  fs.host.stdout = "";
  await status(fs.host, { config: setup, json: true });
  const llama = JSON.parse(fs.host.stdout).engines.find((x: { name: string }) =>
    x.name === "llama"
  );
  assertEquals(llama.modelPresent, null);
  assertEquals(llama.modelUnknown, "outside lychd's read permission");
});

Deno.test("15: hints carry --system; a user-mode command that finds a system install says so", async () => {
  const fs = new FakeSystemd(engines(), {}, null);
  fs.host.files.clear();
  assertEquals(
    await init(fs.host, {
      config: { system: true, configPath: null, overrides: overridesFor(engines(), "llama") },
      dryRun: false,
      force: false,
      reload: true,
    }),
    EXIT.OK,
    fs.host.stderr,
  );
  assertMatch(fs.host.stdout, /Next: lychd pull --system, then lychd swap --system llama/);
  await assertRejects(() => status(fs.host, { config: setup, json: false }), (err: Error) => {
    assert(err instanceof LychdError);
    assertEquals(err.exitCode, EXIT.FAILED);
    assertMatch(
      err.message,
      /not set up in user mode here, but it is in system mode: run the command again with --system/,
    );
    return true;
  });
});

Deno.test("15: no systemd to reach is its own exit code, with what to do", async () => {
  const fs = await installed(engines(), "llama");
  const broken = new FakeSystemd(
    engines(),
    Object.fromEntries(
      [...fs.host.files.keys()].map((p) => [p, fs.host.text(p)!]),
    ),
    null,
    (program) =>
      program === "systemctl"
        ? { code: 1, stdout: "", stderr: "Failed to connect to bus: No medium found" }
        : null,
  );
  await assertRejects(() => status(broken.host, { config: setup, json: false }), (err: Error) => {
    assert(err instanceof LychdError);
    assertEquals(err.exitCode, EXIT.NO_SYSTEMD);
    assertMatch(
      err.message,
      /cannot reach your user's systemd .*Failed to connect to bus.*As root, use --system/,
    );
    return true;
  });
});

Deno.test("16: init starts the harvester and scribe; one whose image is missing is reported, init still succeeds", async () => {
  const fs = new FakeSystemd(engines(), {}, null);
  fs.missingImages.add("docker.io/grafana/grafana:12.2.0");
  assertEquals(
    await init(fs.host, {
      config: { ...setup, overrides: overridesFor(engines(), "llama") },
      dryRun: false,
      force: false,
      reload: true,
    }),
    EXIT.OK,
    fs.host.stderr,
  );
  assert(
    fs.host.calls.includes("systemctl --user start harvester.service"),
    fs.host.calls.join("\n"),
  );
  assert(!fs.host.calls.includes("systemctl --user start scribe.service"));
  assertMatch(
    fs.host.stdout,
    /scribe\.service is not started: its image docker\.io\/grafana\/grafana:12\.2\.0 is not on this host yet\. Fetch it with `lychd pull`/,
  );
});

Deno.test("8: a HOME or XDG folder that would put %h or a blank into a unit is refused", () => {
  for (
    const [name, value] of [["HOME", "/tmp/a home%h"], ["XDG_CONFIG_HOME", "/x/%n"], [
      "XDG_DATA_HOME",
      "/d/../etc",
    ]]
  ) {
    const env: Record<string, string> = { HOME: "/home/ada", [name]: value };
    let err: unknown = null;
    try {
      locations("user", (n) => env[n]);
    } catch (e) {
      err = e;
    }
    assert(err instanceof LychdError, `${name}=${value} accepted`);
    assertEquals(err.exitCode, EXIT.USAGE);
    assertMatch(err.message, new RegExp(`^${name}=`));
  }
  assertEquals(
    locations("user", (n) => ({ HOME: "/home/ada/" } as Record<string, string>)[n]).dataDir,
    "/home/ada/.local/share/lychd",
  );
});

Deno.test('19: a connection closed without an answer is said so, not "fetch failed"', async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const accepting = (async () => {
    for await (const c of listener) c.close();
  })();
  try {
    const r = await denoHost.httpGet(`http://127.0.0.1:${port}/health`, 2000);
    assertDeep(r, { error: "connection closed without an answer" });
  } finally {
    listener.close();
    await accepting.catch(() => {});
  }
  assertDeep(await denoHost.httpGet(`http://127.0.0.1:${freePort()}/`, 2000), { error: "refused" });
});

/** The last systemctl calls on the engine's unit were a restart: for an NVIDIA engine, a stop,
 * the GPU memory check, then a start. */
function assertRestarted(fs: FakeSystemd, engine: string) {
  const unit = `soulstone-${engine}.service`;
  const calls = fs.host.calls.filter((c) =>
    c.endsWith(` ${unit}`) && / (stop|start|restart) /.test(c)
  );
  assertDeep(calls.slice(-2), [`systemctl --user stop ${unit}`, `systemctl --user start ${unit}`]);
}
