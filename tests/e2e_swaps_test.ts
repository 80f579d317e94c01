/**
 * End to end under REAL systemd, Quadlet and Podman (a sandbox guest or this host: see
 * tests/support/target.ts), in system mode (root, `--system`) and in user mode (an
 * unprivileged user, rootless Podman, `systemctl --user`): `lychd init` with six engines
 * played by a fake engine image, then `lychd swap` between them. After every swap exactly one
 * soulstone is active, port 8081 answers from the right engine, the old container is gone and
 * only the active engine is wanted at boot. A swap to an engine that never becomes ready rolls
 * back; an interrupted swap releases the lock; stop, and (user mode) uninstall.
 *
 * In the default layout, the gate (lychd-gate.service on 8081, the engines behind it on 18081);
 * LYCHD_E2E_LAYOUT=direct runs the same steps with `gate: false`, the engines on 8081 (.ci/run
 * does, in its host-mode runs).
 */
import { EXIT } from "../lib/exit.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { within } from "./support/wait.ts";
import {
  buildFakeEngineImage,
  buildPrometheusImage,
  e2eUnavailable,
  type Mode,
  modeOf,
  openTarget,
  type Target,
  writeConfig,
} from "./support/target.ts";

const ENGINES = ["llama", "sglang", "vllm", "broken", "late", "coldfail"];
const PORTS: Record<string, number> = {
  llama: 8080,
  sglang: 30000,
  vllm: 8000,
  broken: 9000,
  late: 7000,
  coldfail: 6000,
};
const TRICKY = `100% of $HOME and \${USER}, %h %n, 'single' "double" back\\slash`;

const GATED = (Deno.env.get("LYCHD_E2E_LAYOUT") ?? "gate") !== "direct";
/** Where the harvester finds the engine: behind the gate on its own port, else on 8081. */
const ENGINE_PORT = GATED ? 18081 : 8081;

/** An image that is not built until the test says so: swaps to it must fail fast, then work. */
const LATE_IMAGE = "localhost/lychd-fake-engine-late:1";

function config(image: string, prometheus: string): string {
  return `engines: [llama, sglang, vllm, broken, late, coldfail]
active: llama
gpu: cpu
gate: ${GATED}
harvester:
  image: ${prometheus}
  scrape_interval: 1s
cartridges:
  llama:
    image: ${image}
    model: tiny/llama-gguf:Q4_K_M
    args: [--fake-load-ms, "1500"]
  sglang:
    image: ${image}
    model: org/sglang-model
    # Values special to systemd and the shell: they must reach the engine byte for byte.
    args: [--fake-load-ms, "800", ${JSON.stringify(TRICKY)}]
  vllm:
    image: ${image}
    model: org/vllm-model
    # Ignores SIGTERM like llama.cpp with clients connected: the swap away must kill it.
    args: [--fake-ignore-sigterm]
    stop_timeout: 2s
  broken:
    image: ${image}
    port: 9000
    model: never-served
    args: [--port, "9000", --fake-never-ready]
  late:
    image: ${LATE_IMAGE}
    port: 7000
    model: late-model
    args: [late-model, --port, "7000"]
  coldfail:
    # Healthy and listing its model, but it cannot answer a completion: the warm-up must catch it.
    image: ${image}
    port: 6000
    model: cold-model
    warmup: true
    args: [cold-model, --port, "6000", --fake-load-ms, "300", --fake-completions-fail]
`;
}

async function assertServing(target: Target, engine: string) {
  const { flags, scope, bootTarget } = modeOf(target);
  const guest = target.run;
  for (const e of ENGINES) {
    const r = await guest(["systemctl", ...scope, "is-active", `soulstone-${e}.service`]);
    assertEquals(r.stdout.trim(), e === engine ? "active" : "inactive", `soulstone-${e}`);
  }
  const who = await guest(["curl", "-fsS", "--max-time", "5", "http://127.0.0.1:8081/whoami"]);
  assertEquals(who.code, 0, who.stderr);
  assertMatch(who.stdout, new RegExp(`^port=${PORTS[engine]} `));
  const ps = await guest(["podman", "ps", "--format", "{{.Names}}"]);
  assertDeep(ps.stdout.split("\n").filter((n) => n.startsWith("soulstone-")), [
    `soulstone-${engine}`,
  ]);
  const wants = await guest(["systemctl", ...scope, "show", "-p", "Wants", "--value", bootTarget]);
  assertDeep(
    wants.stdout.split(/\s+/).filter((u) => u.startsWith("soulstone-")),
    [`soulstone-${engine}.service`],
    "only the active engine is wanted at boot",
  );
  const status = await target.lychd("status", ...flags, "--json");
  assertEquals(status.code, 0, status.stdout + status.stderr);
  const report = JSON.parse(status.stdout);
  assertEquals(report.mode, target.mode);
  assertEquals(report.active, engine);
  assertEquals(report.boot, engine);
  assertEquals(report.healthy, true);
  if (GATED) {
    // Open to the engine that serves, nothing held.
    const g = report.gate;
    assertDeep(
      [g?.running, g?.open, g?.engine, g?.held],
      [true, true, engine, 0],
      JSON.stringify(g),
    );
  } else assertEquals(report.gate, null);
}

for (const mode of ["system", "user"] as Mode[]) {
  Deno.test({
    name:
      `e2e (real systemd, Quadlet, Podman), ${mode} mode, ${GATED ? "the gate" : "gate: false"}: ` +
      "init, swaps, kill on a stuck stop, rollback, interrupted swap, stop",
    ignore: e2eUnavailable(mode),
    sanitizeResources: false,
    sanitizeOps: false,
    fn: (t) => swaps(t, mode),
  });
}

async function swaps(t: Deno.TestContext, mode: Mode) {
  const target = await openTarget(mode, mode === "system" ? ["/var/lib/lychd", "/etc/lychd"] : []);
  const { flags, scope, config: configPath } = modeOf(target);
  const guest = target.run;
  const lychd = (...args: string[]) => target.lychd(...args);
  try {
    const image = await buildFakeEngineImage(target);
    const prometheus = await buildPrometheusImage(target);
    await t.step(`init writes the ${mode} units and systemd generates them`, async () => {
      const w = await writeConfig(target, config(image, prometheus));
      assertEquals(w.code, 0, w.stderr);
      const init = await lychd("init", ...flags);
      assertEquals(init.code, 0, init.stdout + init.stderr);
      assertMatch(
        init.stdout,
        new RegExp(
          `Reloaded systemd: systemctl ${scope.join(" ")}${scope.length ? " " : ""}daemon-reload`,
        ),
      );
      for (const e of ENGINES) {
        const r = await guest([
          "systemctl",
          ...scope,
          "show",
          "-p",
          "LoadState",
          "--value",
          `soulstone-${e}.service`,
        ]);
        assertEquals(r.stdout.trim(), "loaded", e);
      }
    });

    const starts: Record<string, number> = {};
    for (const engine of ["llama", "vllm", "sglang", "llama"]) {
      await t.step(`swap to ${engine}`, async () => {
        starts[engine] = (starts[engine] ?? 0) + 1;
        const r = await lychd("swap", ...flags, engine);
        assertEquals(r.code, 0, r.stdout + r.stderr);
        assertMatch(
          r.stdout,
          new RegExp(
            `^${engine} ready in [0-9.]+ s \\(.*container up [0-9.]+ s, model loaded [0-9.]+ s, ` +
              "first request [0-9.]+ s\\)",
          ),
        );
        console.log(`  ${r.stdout.trim()}`);
        // vllm ignores SIGTERM: leaving it, its stop times out and the swap says it killed it.
        if (engine === "sglang") {
          assertMatch(r.stdout, /old engine stopped [0-9.]+ s \(killed\)/);
          // Under real systemd and Podman, the escaped values arrive exactly as written.
          const argv = await guest(["curl", "-fsS", "http://127.0.0.1:8081/argv"]);
          assertDeep(JSON.parse(argv.stdout), [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "org/sglang-model",
            "--host",
            "0.0.0.0",
            "--port",
            "30000",
            "--enable-metrics",
            "--fake-load-ms",
            "800",
            TRICKY,
          ]);
        }
        await assertServing(target, engine);
        // Its compile cache: written by its first start, found by the next one, although its
        // container was removed in between (assertServing saw only one soulstone container).
        const who = await guest(["curl", "-fsS", "http://127.0.0.1:8081/whoami"]);
        assertMatch(
          who.stdout,
          new RegExp(` cache=${starts[engine] === 1 ? "miss" : "hit"}$`, "m"),
        );
      });
    }

    await t.step("status reports each engine's compile cache", async () => {
      const st = JSON.parse((await lychd("status", ...flags, "--json")).stdout);
      const llama = st.engines.find((e: { name: string }) => e.name === "llama");
      assertMatch(llama.compileCache.path, /\/(\.cache\/lychd|lib\/lychd\/cache)\/llama$/);
      assert(llama.compileCache.bytes >= 64 * 1024, JSON.stringify(llama.compileCache));
    });

    await t.step("the swap away from an engine that ignores SIGTERM had to kill it", async () => {
      // The sglang swap above stopped vllm, which ignores SIGTERM: the journal shows the kill.
      const journal = await guest([
        "journalctl",
        ...scope,
        "-u",
        "soulstone-vllm.service",
        "--no-pager",
        "-o",
        "cat",
      ]);
      assertMatch(journal.stdout, /SIGTERM ignored/);
    });

    await t.step(
      `the harvester unit (a real Prometheus) scrapes whichever engine holds port ${ENGINE_PORT}`,
      async () => {
        const start = await guest(["systemctl", ...scope, "start", "harvester.service"]);
        assertEquals(start.code, 0, start.stderr);
        const query = async (q: string) => {
          const r = await guest([
            "curl",
            "-fsS",
            "--max-time",
            "5",
            `http://127.0.0.1:9090/api/v1/query?query=${encodeURIComponent(q)}`,
          ]);
          return r.code === 0
            ? JSON.parse(r.stdout).data.result as { metric: Record<string, string> }[]
            : [];
        };
        const servingIs = async (engine: string) => {
          const deadline = Date.now() + 90_000;
          while (Date.now() < deadline) {
            const r = await query("lychd:engine_serving");
            if (r.length === 1 && r[0].metric.lychd_engine === engine) return true;
            await new Promise((r) => setTimeout(r, 500));
          }
          return false;
        };
        assert(await servingIs("llama"), "the harvester never saw llama serving");
        const st = JSON.parse((await lychd("status", ...flags, "--json")).stdout);
        assertEquals(
          st.watchers.find((w: { name: string }) => w.name === "harvester").healthy,
          true,
        );
        const up = await query(`up{job="soulstone",instance="127.0.0.1:${ENGINE_PORT}"} == 1`);
        assertEquals(up.length, 1, `127.0.0.1:${ENGINE_PORT} is not scraped`);
        if (GATED) {
          const gate = await query('up{job="lychd-gate",instance="127.0.0.1:8081"} == 1');
          assertEquals(gate.length, 1, "the gate's /lychd/metrics is not scraped");
        }
        const s = await lychd("swap", ...flags, "sglang");
        assertEquals(s.code, 0, s.stderr);
        assert(await servingIs("sglang"), "after the swap the harvester did not see sglang");
        const back = await lychd("swap", ...flags, "llama");
        assertEquals(back.code, 0, back.stderr);
      },
    );

    await t.step("swap to the engine already serving is a no-op", async () => {
      const r = await lychd("swap", ...flags, "llama");
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stdout, /llama is already active and healthy/);
    });

    await t.step("a swap to an engine that never becomes ready rolls back", async () => {
      const r = await lychd("swap", ...flags, "broken", "--timeout", "4s");
      assertEquals(r.code, EXIT.ROLLED_BACK, r.stdout + r.stderr);
      assertMatch(
        r.stderr,
        /broken failed: not ready after 4\.0 s \(last answer on .*503 Loading model\)/,
      );
      assertMatch(r.stderr, /Last lines of soulstone-broken\.service's journal/);
      assertMatch(r.stderr, /Rolling back to llama/);
      assertMatch(r.stderr, /llama serves again, as before/);
      await assertServing(target, "llama");
    });

    await t.step("a swap to an engine that fails its warm-up rolls back", async () => {
      const r = await lychd("swap", ...flags, "coldfail");
      assertEquals(r.code, EXIT.ROLLED_BACK, r.stdout + r.stderr);
      assertMatch(
        r.stderr,
        /coldfail failed: healthy, but the warm-up request \(one short completion on \S+\) failed: HTTP 500: .*fake: out of memory/,
      );
      assertMatch(r.stderr, /llama serves again, as before/);
      await assertServing(target, "llama");
    });

    await t.step(
      "two swaps at once serialize; the one that finishes last is the engine left serving",
      async () => {
        const run = async (engine: string) => {
          const r = await lychd("swap", ...flags, engine);
          return { engine, ...r, endedAt: performance.now() };
        };
        const results = await Promise.all([run("sglang"), run("vllm")]);
        for (const r of results) assertEquals(r.code, 0, r.stdout + r.stderr);
        assert(
          results.some((r) =>
            /Another lychd command \(init or swap\) is running; waiting/.test(r.stderr)
          ),
          "the second swap did not wait for the first",
        );
        const last = results.reduce((a, b) => (a.endedAt > b.endedAt ? a : b));
        await assertServing(target, last.engine);
      },
    );

    await t.step(
      "an interrupted swap says where things stand and releases the lock",
      async () => {
        const child = target.spawnLychd("swap", ...flags, "broken", "--timeout", "5m");
        const stdout = new Response(child.stdout).text();
        // Interrupted once it waits for the engine (its progress says so), not at a moment
        // picked by the clock: a loaded machine may still be stopping the old engine then.
        const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
        let stderr = "";
        const waiting =
          /broken: (loading \(503 Loading model\)|waiting for the server to open its port)/;
        await within(
          (async () => {
            while (!waiting.test(stderr)) {
              const { value, done } = await lines.read();
              if (done) throw new Error(`the swap ended before it waited: ${stderr}`);
              stderr += value;
            }
          })(),
          "the swap to wait for broken",
        );
        child.kill("SIGTERM");
        for (;;) {
          const { value, done } = await lines.read();
          if (done) break;
          stderr += value;
        }
        const r = { code: (await child.status).code };
        await stdout;
        assertEquals(r.code, 143, stderr);
        assertMatch(
          stderr,
          /lychd swap interrupted \(SIGTERM\) while: (loading \(503 Loading model\)|waiting for the server to open its port)/,
        );
        assertMatch(stderr, /systemd keeps starting soulstone-broken\.service in the background/);
        if (GATED) assertMatch(stderr, /the gate holds requests until it serves/);
        const back = await lychd("swap", ...flags, "llama");
        assertEquals(back.code, 0, back.stdout + back.stderr);
        assert(!/waiting for it to finish/.test(back.stderr), "the lock was not released");
        await assertServing(target, "llama");
      },
    );

    await t.step(
      "a swap to an engine whose image is absent fails fast; after the image is built, it works",
      async () => {
        await guest(["podman", "rmi", "-f", LATE_IMAGE]);
        // When systemd last started the unit (0: never).
        const started = async () =>
          (await guest([
            "systemctl",
            ...scope,
            "show",
            "-p",
            "InactiveExitTimestampMonotonic",
            "--value",
            "soulstone-late.service",
          ])).stdout.trim();
        const startedBefore = await started();
        const r = await lychd("swap", ...flags, "late");
        assertEquals(r.code, EXIT.FAILED, r.stdout + r.stderr);
        assertMatch(
          r.stderr,
          new RegExp(
            "the image of late, localhost/lychd-fake-engine-late:1, is not on this host.*" +
              `lychd pull ${flags.map((f) => f + " ").join("")}late`,
          ),
        );
        // Fast: it stopped before anything of the swap began (no drain, no start, no waiting),
        // however long the machine took to run it.
        assertEquals(await started(), startedBefore, "it started soulstone-late.service");
        assert(!/^\[[0-9.]+ s\] late: /m.test(r.stderr), `it began the swap: ${r.stderr}`);
        await assertServing(target, "llama");
        await buildFakeEngineImage(target, LATE_IMAGE);
        const ok = await lychd("swap", ...flags, "late");
        assertEquals(ok.code, 0, ok.stdout + ok.stderr);
        await assertServing(target, "late");
        const status = JSON.parse((await lychd("status", ...flags, "--json")).stdout);
        const late = status.engines.find((e: { name: string }) => e.name === "late");
        assertEquals(late.imagePresent, true);
        assert(late.imageBytes > 1_000_000, "the image's size is reported");
      },
    );

    await t.step("stop, then status says nothing is active", async () => {
      const s = await lychd("stop", ...flags);
      assertEquals(s.code, 0, s.stderr);
      const st = await lychd("status", ...flags);
      assertEquals(st.code, EXIT.NOTHING_ACTIVE, st.stdout + st.stderr);
      assertMatch(st.stdout, /serving: nothing/);
      const ps = await guest(["podman", "ps", "--format", "{{.Names}}"]);
      assert(!ps.stdout.includes("soulstone-"), ps.stdout);
    });
    if (mode === "user") {
      await t.step("a session without a user manager gets lychd's message and exit 8", async () => {
        // What `su` or a bare cron job gives: no XDG_RUNTIME_DIR, so no way to the user manager.
        const r = await guest([
          "env",
          "-u",
          "XDG_RUNTIME_DIR",
          "-u",
          "DBUS_SESSION_BUS_ADDRESS",
          ...target.lychdCommand("status"),
        ]);
        assertEquals(r.code, EXIT.NO_SYSTEMD, r.stdout + r.stderr);
        assertMatch(r.stderr, /^lychd: cannot reach your user's systemd \(systemctl --user\): /m);
        assertMatch(r.stderr, /log in through a session .*loginctl enable-linger/);
        const d = await guest(["env", "-u", "XDG_RUNTIME_DIR", ...target.lychdCommand("doctor")]);
        assertEquals(d.code, EXIT.FAILED, d.stdout);
        assertMatch(d.stdout, /^FAIL {2}user manager \(systemctl --user\): not reachable: /m);
      });
    }

    await t.step("doctor, logs, stop --all, uninstall, uninstall --purge", async () => {
      const doctor = await lychd("doctor", ...flags);
      assertMatch(doctor.stdout, /^PASS {2}Quadlet generator: /m);
      assertMatch(
        doctor.stdout,
        mode === "user"
          ? /^PASS {2}user manager \(systemctl --user\): (running|degraded)$/m
          : /^PASS {2}system manager: (running|degraded)$/m,
      );
      if (mode === "user") assertMatch(doctor.stdout, /^PASS {2}linger: enabled for /m);
      assertMatch(doctor.stdout, /^PASS {2}lychd's files: \d+ present and unmodified$/m);

      // The engine's own output, from the journal of this mode (the user's own, in user mode).
      const logs = await lychd("logs", ...flags, "late", "-n", "20");
      assertEquals(logs.code, 0, logs.stderr);
      assertMatch(logs.stdout, /late-model/);

      const start = await guest(["systemctl", ...scope, "start", "harvester.service"]);
      assertEquals(start.code, 0, start.stderr);
      const all = await lychd("stop", ...flags, "--all");
      assertEquals(all.code, 0, all.stdout + all.stderr);
      for (const unit of ["harvester.service", "scribe.service", "lychd-gate.service"]) {
        const r = await guest(["systemctl", ...scope, "is-active", unit]);
        assertEquals(r.stdout.trim(), "inactive", unit);
      }

      const podmanList = async (what: string[]) =>
        (await guest(["podman", ...what])).stdout.split("\n").filter((l) => l.trim());
      const unitDir = mode === "system"
        ? "/etc/containers/systemd"
        : `${target.home}/.config/containers/systemd`;
      const units = async () =>
        (await guest(["ls", "-A", unitDir])).stdout.split("\n").filter((l) => l.trim());
      const volumes = ["volume", "ls", "--format", "{{.Name}}"];
      const secrets = ["secret", "ls", "--format", "{{.Name}}"];
      assert((await units()).length >= ENGINES.length + 2, "units before uninstall");

      // uninstall: the units go, the data volumes, the Grafana secret and lychd.yaml stay.
      const u = await lychd("uninstall", ...flags);
      assertEquals(u.code, EXIT.OK, u.stdout + u.stderr);
      assertDeep(await units(), []);
      assertDeep(
        (await podmanList(["ps", "-a", "--format", "{{.Names}}"])).filter((n) =>
          /^(soulstone-|harvester|scribe)/.test(n)
        ),
        [],
      );
      assert((await podmanList(volumes)).includes("lychd-harvester-data"), "volume kept");
      assert((await podmanList(secrets)).some((n) => n.startsWith("lychd")), "secret kept");
      assertEquals((await guest(["test", "-f", configPath])).code, 0, "lychd.yaml kept");
      const again = await lychd("uninstall", ...flags);
      assertMatch(again.stdout, /Nothing to uninstall/);

      // --purge --force: the volumes, the secret and the lychd.yaml this test wrote go too.
      const p = await lychd("uninstall", ...flags, "--purge", "--force");
      assertEquals(p.code, EXIT.OK, p.stdout + p.stderr);
      assertDeep((await podmanList(volumes)).filter((n) => n.startsWith("lychd-")), []);
      assertDeep((await podmanList(secrets)).filter((n) => n.startsWith("lychd")), []);
      assertEquals((await guest(["test", "-e", configPath])).code, 1, "lychd.yaml purged");
    });
  } finally {
    await target.close();
  }
}
