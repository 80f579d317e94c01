/**
 * Warm swaps end to end, under REAL systemd, Quadlet and Podman (docs/warm-swaps.md): two
 * stand-ins that sleep as vLLM does (tests/e2e/fake_engine.ts: /sleep, /wake_up, /is_sleeping;
 * a wake takes 0.3 s; a request sent to one asleep hangs, vllm #45268) and one that stops.
 * 16 clients through 10 warm swaps and 2 cold ones in the same run: not one request fails, none
 * reaches an engine asleep, at most one engine is awake after every swap, and the longest time
 * without an answer is reported for both kinds; both stand-ins crash if put to sleep while busy
 * (vllm #45520), which the drain before every sleep never lets happen. Then (system mode) an
 * engine asleep whose container is killed: systemd's restart is skipped (lychd's mark). Then an
 * engine that dies on /sleep: the swap stops it and goes on cold, and systemd does not bring it
 * back awake. Then no room to sleep. Then (system mode) an SGLang stand-in released and resumed
 * under load, which refuses a release while busy: never refused.
 */
import { EXIT } from "../lib/exit.ts";
import type { Outcome } from "./e2e/load.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import {
  buildFakeEngineImage,
  buildPrometheusImage,
  e2eUnavailable,
  type Mode,
  modeOf,
  openTarget,
  ROOT,
  startLoad,
  type Target,
  writeConfig,
} from "./support/target.ts";
import { waitUntil } from "./support/wait.ts";

const CLIENTS = 16;
/** Where each engine answers in the guest (docs/warm-swaps.md: one port each for those that sleep). */
const PORTS: Record<string, number> = { vllm: 18082, alpha: 18083, sglang: 18081 };
/** The stand-ins say which container port answered. */
const BY_PORT: Record<string, string> = {
  "port=8000": "vllm",
  "port=8001": "alpha",
  "port=30000": "sglang",
};

function config(
  fake: string,
  prometheus: string,
  alphaExtra: string[] = [],
  gate = "",
  sglangSleeps = false,
): string {
  const words = (a: string[]) => a.map((w) => JSON.stringify(w)).join(", ");
  return `engines: [vllm, alpha, sglang]
active: vllm
gpu: cpu
${gate}harvester:
  image: ${prometheus}
  scrape_interval: 1s
cartridges:
  vllm:
    image: ${fake}
    model: org/vllm-model
    sleep: 1
    args: [--fake-load-ms, "2500", --fake-sleep-ms, "100", --fake-wake-ms, "300", --fake-hang-asleep, --fake-crash-on-busy-sleep]
  alpha:
    image: ${fake}
    port: 8001
    model: org/alpha-model
    sleep: 2
    sleep_api: vllm
    warmup: true
    args: [${
    words([
      "org/alpha-model",
      "--port",
      "8001",
      "--fake-load-ms",
      "2500",
      "--fake-sleep-ms",
      "100",
      "--fake-wake-ms",
      "150",
      "--fake-hang-asleep",
      "--fake-crash-on-busy-sleep",
      ...alphaExtra,
    ])
  }]
  sglang:
    image: ${fake}
    model: org/sglang-model
${
    sglangSleeps
      ? `    sleep: 1
    args: [--fake-load-ms, "2500", --fake-sleep-ms, "100", --fake-wake-ms, "300", --fake-hang-asleep, --fake-refuse-busy-release]`
      : `    args: [--fake-load-ms, "2500"]`
  }
`;
}

/** Which engines say they are awake (running, and /is_sleeping false, or no sleep at all). */
async function awake(target: Target): Promise<string[]> {
  const out: string[] = [];
  for (const [engine, port] of Object.entries(PORTS)) {
    const health = await target.run([
      "curl",
      "-fsS",
      "--max-time",
      "3",
      `http://127.0.0.1:${port}/health`,
    ]);
    if (health.code !== 0) continue;
    if (engine === "sglang") {
      out.push(engine);
      continue;
    }
    const r = await target.run([
      "curl",
      "-fsS",
      "--max-time",
      "3",
      `http://127.0.0.1:${port}/is_sleeping`,
    ]);
    if (r.code === 0 && JSON.parse(r.stdout).is_sleeping === false) out.push(engine);
  }
  return out;
}

/** The longest time within [from, to] in which no request completed. */
function longestPause(results: Outcome[], from: number, to: number): number {
  const ends = [from, ...results.map((r) => r.end).filter((e) => e > from && e < to), to]
    .sort((a, b) => a - b);
  let longest = 0;
  for (let i = 1; i < ends.length; i++) longest = Math.max(longest, ends[i] - ends[i - 1]);
  return longest;
}

for (const mode of ["system", "user"] as Mode[]) {
  Deno.test({
    name: `e2e warm swaps, ${mode} mode: ${CLIENTS} clients through 10 warm swaps and 2 cold ` +
      "ones, 0 failed, never sent to an engine asleep; a crash on /sleep goes on cold",
    ignore: e2eUnavailable(mode),
    sanitizeResources: false,
    sanitizeOps: false,
    fn: (t) => warmSwaps(t, mode),
  });
}

async function warmSwaps(t: Deno.TestContext, mode: Mode) {
  const system = mode === "system";
  const target = await openTarget(mode, system ? ["/var/lib/lychd", "/etc/lychd"] : []);
  const { flags, scope } = modeOf(target);
  const lychd = (...args: string[]) => target.lychd(...args);
  try {
    const fake = await buildFakeEngineImage(target);
    const prometheus = await buildPrometheusImage(target);
    assertEquals((await writeConfig(target, config(fake, prometheus))).code, 0);

    await t.step("init; vllm, then alpha: vllm is put to sleep, not stopped", async () => {
      const init = await lychd("init", ...flags);
      assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
      const first = await lychd("swap", ...flags, "vllm");
      assertEquals(first.code, EXIT.OK, first.stdout + first.stderr);
      const second = await lychd("swap", ...flags, "alpha");
      assertEquals(second.code, EXIT.OK, second.stdout + second.stderr);
      assertMatch(second.stdout, /old engine asleep/);
      assertDeep(await awake(target), ["alpha"]);
      const status = JSON.parse((await lychd("status", ...flags, "--json")).stdout);
      const vllm = status.engines.find((e: { name: string }) => e.name === "vllm");
      assertDeep([status.active, vllm.state, vllm.asleep], ["alpha", "active", 1]);
      const text = (await lychd("status", ...flags)).stdout;
      assertMatch(text, /vllm\s+active \(asleep, level 1\)/);
    });

    await t.step(`${CLIENTS} clients through 10 warm swaps, then 2 cold ones`, async () => {
      const load = startLoad(target, CLIENTS);
      await new Promise((r) => setTimeout(r, 1000));
      const swaps: { to: string; from: number; end: number; warm: boolean; line: string }[] = [];
      const order = [
        ...Array.from({ length: 10 }, (_, i) => i % 2 === 0 ? "vllm" : "alpha"),
        "sglang",
        "vllm",
      ];
      for (const next of order) {
        const t0 = Date.now();
        const r = await lychd("swap", ...flags, next);
        const t1 = Date.now();
        assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
        swaps.push({
          to: next,
          from: t0,
          end: t1,
          warm: /woken/.test(r.stdout),
          line: r.stdout.trim().split("\n").at(-1)!,
        });
        assertDeep(await awake(target), [next], `awake after the swap to ${next}`);
        await new Promise((r) => setTimeout(r, 600));
      }
      const results = await load.stop();
      const failed = results.filter((r) => !r.ok);
      const pauses = swaps.map((s) => ({
        ...s,
        pause: longestPause(results, s.from, s.end + 600),
      }));
      const fmt = (ms: number[]) => ms.map((m) => (m / 1000).toFixed(2)).join(" ");
      const warm = pauses.filter((p) => p.warm);
      const cold = pauses.filter((p) => !p.warm);
      console.log(
        `  ${results.length} requests, ${failed.length} failed; longest pause per swap (s): ` +
          `warm ${fmt(warm.map((p) => p.pause))}; cold ${fmt(cold.map((p) => p.pause))}`,
      );
      for (const p of pauses) console.log(`  -> ${p.to}: ${p.line}`);
      assertEquals(failed.length, 0, failed.slice(0, 5).map((f) => JSON.stringify(f)).join("\n"));
      // Swaps 2..10 find their target asleep; the first to vllm too (asleep since the step above).
      assertEquals(warm.length, 10, pauses.map((p) => `${p.to}: ${p.line}`).join("\n"));
      assertDeep(cold.map((p) => p.to), ["sglang", "vllm"]);
      for (const r of results) assert(BY_PORT[r.by], `answered by ${r.by}`);
      // The gate's metrics tell the kinds apart: the 10 woken, the rest started.
      const metrics = await target.run(["curl", "-fsS", "http://127.0.0.1:8081/lychd/metrics"]);
      const swapsOf = (kind: string) =>
        metrics.stdout.split("\n").filter((l) =>
          l.startsWith("lychd_gate_swaps_total{") && l.includes(`kind="${kind}"`) &&
          l.includes('result="ok"')
        ).reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
      assertEquals(swapsOf("warm"), 10, metrics.stdout);
      assert(swapsOf("cold") >= 2, metrics.stdout);
      // Never sent to an engine asleep: the stand-ins log every request that arrives so.
      for (const e of ["vllm", "alpha"]) {
        const j = await target.run([
          "journalctl",
          ...scope,
          "-u",
          `soulstone-${e}.service`,
          "--no-pager",
        ]);
        assert(!/request while asleep/.test(j.stdout), `${e} got a request while asleep`);
        // Switched on in both (vllm #45520: /sleep during a decode crashes): never hit, as the
        // gate drains the engine before it is put to sleep.
        assert(!/crash on \/sleep/.test(j.stdout), `${e} was put to sleep while busy`);
      }
    });

    await t.step({
      name: "the PIDs a sleep's GPU check counts are the engine container's (systemctl status)",
      ignore: !system,
      fn: async () => {
        const script = `${ROOT}/tests/support/unit_pids_main.ts`;
        const argv = target.lychdCommand("soulstone-vllm.service").map((a) =>
          a === `${ROOT}/main.ts` ? script : a
        );
        if (!argv.includes(script)) return; // a compiled binary: no script to run beside it
        const found = await target.run(argv);
        assertEquals(found.code, 0, found.stderr);
        const pids: number[] = JSON.parse(found.stdout);
        const status = await target.run([
          "systemctl",
          "status",
          "--no-pager",
          "--full",
          "--lines=0",
          "soulstone-vllm.service",
        ]);
        console.log(`  systemctl status (verbatim):\n${status.stdout}`);
        // The engine's own process (Podman's view, host PID) and conmon (systemd's MainPID).
        const inspect = await target.run([
          "podman",
          "inspect",
          "--format",
          "{{.State.Pid}}",
          "soulstone-vllm",
        ]);
        assertEquals(inspect.code, 0, inspect.stderr);
        const main = await target.run([
          "systemctl",
          "show",
          "-p",
          "MainPID",
          "--value",
          "soulstone-vllm.service",
        ]);
        const expected = [Number(inspect.stdout.trim()), Number(main.stdout.trim())];
        console.log(`  unitPids: ${JSON.stringify(pids)}; engine and conmon: ${expected}`);
        for (const pid of expected) {
          assert(pid > 0 && pids.includes(pid), `${pid} missing from ${JSON.stringify(pids)}`);
        }
      },
    });

    // System mode only: the same unit line and `systemctl --user set-environment` passed in user
    // mode too, and the step waits out RestartSec=10 (CI time).
    await t.step({
      name: "a crash while asleep: systemd's restart is skipped, the engine stays down",
      ignore: !system,
      fn: async () => {
        const toAlpha = await lychd("swap", ...flags, "alpha");
        assertEquals(toAlpha.code, EXIT.OK, toAlpha.stdout + toAlpha.stderr);
        assertMatch(toAlpha.stdout, /old engine asleep/);
        const show = async () =>
          Object.fromEntries(
            (await target.run([
              "systemctl",
              ...scope,
              "show",
              "soulstone-vllm.service",
              "-p",
              "ActiveState,SubState,NRestarts,Result",
            ])).stdout.trim().split("\n").map((l) => l.split("=", 2)),
          );
        const restartsBefore = Number((await show()).NRestarts);
        const kill = await target.run(["podman", "kill", "soulstone-vllm"]);
        assertEquals(kill.code, 0, kill.stderr);
        // RestartSec=10: systemd tries, and its ExecCondition= (the mark lychd set) skips the start.
        let last: Record<string, string> = {};
        await waitUntil(
          async () => {
            last = await show();
            // Tried (NRestarts counts it) and settled: skipped (inactive) or started (active).
            return Number(last.NRestarts) > restartsBefore &&
              ["inactive", "active", "failed"].includes(last.ActiveState);
          },
          "systemd's restart of vllm after its container was killed",
          60_000,
          500,
        );
        assertDeep(
          [last.ActiveState, last.Result],
          ["inactive", "exec-condition"],
          JSON.stringify(last),
        );
        assertDeep(await awake(target), ["alpha"]);
        // The next swap to it starts it as usual: the mark is lifted first.
        const back = await lychd("swap", ...flags, "vllm");
        assertEquals(back.code, EXIT.OK, back.stdout + back.stderr);
        assertDeep(await awake(target), ["vllm"]);
      },
    });

    await t.step("a crash on /sleep: the swap stops it and goes on; it stays stopped", async () => {
      assertEquals(
        (await writeConfig(target, config(fake, prometheus, ["--fake-crash-on-sleep"]))).code,
        0,
      );
      const init = await lychd("init", ...flags);
      assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
      const toAlpha = await lychd("swap", ...flags, "alpha");
      assertEquals(toAlpha.code, EXIT.OK, toAlpha.stdout + toAlpha.stderr);
      const back = await lychd("swap", ...flags, "vllm");
      assertEquals(back.code, EXIT.OK, back.stdout + back.stderr);
      assertMatch(back.stderr + back.stdout, /alpha did not go to sleep/);
      // Failed (it did crash) or inactive, and no restart pending: systemd restarts only a unit in
      // SubState auto-restart, and that restart would bring alpha back awake beside vllm.
      const state = await target.run([
        "systemctl",
        ...scope,
        "show",
        "soulstone-alpha.service",
        "-p",
        "ActiveState,SubState",
      ]);
      assertMatch(state.stdout, /^ActiveState=(failed|inactive)$/m);
      assert(!/SubState=auto-restart/.test(state.stdout), state.stdout);
      assertDeep(await awake(target), ["vllm"]);
    });

    await t.step("no room to sleep: weights too big for host RAM, then max_asleep: 0", async () => {
      // vllm's weights as the Hugging Face cache holds them: a sparse 8 TiB file.
      const cache = system ? "/var/lib/lychd/models" : `${target.home}/.cache/huggingface`;
      const blobs = `${cache}/hub/models--org--vllm-model/blobs`;
      const mk = await target.run(["sh", "-c", `mkdir -p ${blobs} && truncate -s 8T ${blobs}/w`]);
      assertEquals(mk.code, 0, mk.stderr);
      const toAlpha = await lychd("swap", ...flags, "alpha");
      assertEquals(toAlpha.code, EXIT.OK, toAlpha.stdout + toAlpha.stderr);
      assertMatch(
        toAlpha.stdout + toAlpha.stderr,
        /vllm is stopped, not put to sleep: its weights \(8192\.0 GiB\) would not fit/,
      );
      assertDeep(await awake(target), ["alpha"]);
      const vllm = await target.run(["systemctl", ...scope, "is-active", "soulstone-vllm.service"]);
      assertEquals(vllm.stdout.trim(), "inactive");
      assertEquals((await target.run(["rm", "-rf", `${cache}/hub`])).code, 0);

      const capped = config(fake, prometheus, ["--fake-crash-on-sleep"], "gate: {max_asleep: 0}\n");
      assertEquals((await writeConfig(target, capped)).code, 0);
      const init = await lychd("init", ...flags);
      assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
      const toVllm = await lychd("swap", ...flags, "vllm");
      assertEquals(toVllm.code, EXIT.OK, toVllm.stdout + toVllm.stderr);
      // Stopped, so it never got the /sleep it would have died of.
      assertMatch(
        toVllm.stdout + toVllm.stderr,
        /alpha is stopped, not put to sleep: at most 0 engines may sleep at once/,
      );
      assertDeep(await awake(target), ["vllm"]);
      const alpha = await target.run([
        "systemctl",
        ...scope,
        "is-active",
        "soulstone-alpha.service",
      ]);
      assertEquals(alpha.stdout.trim(), "inactive");
    });

    // System mode only (CI time); the routes and the mark are the same in user mode.
    await t.step({
      name: "SGLang's routes: released and resumed under load, never released while busy",
      ignore: !system,
      fn: async () => {
        const sg = config(fake, prometheus, [], "", true);
        assertEquals((await writeConfig(target, sg)).code, 0);
        const init = await lychd("init", ...flags);
        assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
        // The units changed (ports, Conflicts=): the first swaps start cold; then warm ones.
        for (const next of ["sglang", "vllm"]) {
          const r = await lychd("swap", ...flags, next);
          assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
        }
        const load = startLoad(target, CLIENTS);
        await new Promise((r) => setTimeout(r, 1000));
        const lines: string[] = [];
        for (const next of ["sglang", "vllm", "sglang"]) {
          const r = await lychd("swap", ...flags, next);
          assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
          lines.push(r.stdout.trim().split("\n").at(-1)!);
          const status = JSON.parse((await lychd("status", ...flags, "--json")).stdout);
          const asleep = status.engines.filter((e: { asleep: number | null }) => e.asleep)
            .map((e: { name: string }) => e.name);
          assertDeep([status.active, asleep], [next, [next === "vllm" ? "sglang" : "vllm"]]);
          await new Promise((r) => setTimeout(r, 600));
        }
        const results = await load.stop();
        console.log(`  SGLang's routes: ${results.length} requests; ${lines.join(" | ")}`);
        const failed = results.filter((r) => !r.ok);
        assertEquals(failed.length, 0, failed.slice(0, 5).map((f) => JSON.stringify(f)).join("\n"));
        for (const line of lines) assertMatch(line, /old engine asleep .*woken/);
        const j = await target.run(["journalctl", "-u", "soulstone-sglang.service", "--no-pager"]);
        assertMatch(j.stdout, /memory released/);
        assert(!/release refused|request while asleep/.test(j.stdout), "sglang: busy or asleep");
      },
    });
  } finally {
    await target.close();
  }
}
