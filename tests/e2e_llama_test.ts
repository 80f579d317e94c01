/**
 * End to end with a REAL llama.cpp server (llama-server and a tiny GGUF: LLAMA_DIR in
 * tests/support/target.ts) under real systemd, Quadlet and Podman (tests/support/target.ts),
 * in system mode and in user mode (rootless: the image in the user's storage, the model under
 * the user's home). What an operator hit:
 *   - init starts the harvester (its image is here) and reports the scribe (its image is not);
 *   - swap to the real server: ready, answers a completion;
 *   - a swap to an engine that crashes at start fails within seconds and rolls back;
 *   - the running engine's model changed: init says so, swap restarts it with the new model;
 *   - a swap away from llama.cpp during a generation: its stop takes its own short stop timeout,
 *     not 30 s (the figure is printed).
 */
import { EXIT } from "../lib/exit.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import {
  buildFakeEngineImage,
  buildLlamaImage,
  buildPrometheusImage,
  e2eUnavailable,
  LLAMA_DIR,
  LLAMA_IMAGE,
  llamaMissing,
  type Mode,
  modeOf,
  openTarget,
  type Target,
  writeConfig,
} from "./support/target.ts";

function config(fake: string, prometheus: string, modelDir: string, model: string): string {
  return `engines: [llama, vllm, crashy]
active: llama
gpu: cpu
harvester:
  image: ${prometheus}
  scrape_interval: 1s
cartridges:
  llama:
    image: ${LLAMA_IMAGE}
    model: ${modelDir}/${model}
    # The model's whole context: a long generation lasts (tens of seconds), for the drain.
    args: [--ctx-size, "32768", --threads, "2"]
  vllm:
    image: ${fake}
    model: org/vllm-model
    args: [--fake-load-ms, "300"]
  crashy:
    # The real server, told to load a file that does not exist: it exits at once, every time.
    image: ${LLAMA_IMAGE}
    port: 8090
    model: never-loaded
    args: [-m, ${modelDir}/missing.gguf, --host, 0.0.0.0, --port, "8090"]
`;
}

async function assertActive(target: Target, engine: string) {
  for (const e of ["llama", "vllm", "crashy"]) {
    const r = await target.run([
      "systemctl",
      ...modeOf(target).scope,
      "is-active",
      `soulstone-${e}.service`,
    ]);
    assertEquals(r.stdout.trim(), e === engine ? "active" : "inactive", `soulstone-${e}`);
  }
}

async function models(target: Target): Promise<string[]> {
  const r = await target.run([
    "curl",
    "-fsS",
    "--max-time",
    "5",
    "http://127.0.0.1:8081/v1/models",
  ]);
  assertEquals(r.code, 0, r.stderr);
  return JSON.parse(r.stdout).data.map((m: { id: string }) => m.id);
}

for (const mode of ["system", "user"] as Mode[]) {
  Deno.test({
    name: `e2e with a real llama.cpp server, ${mode} mode: watchers, crash at start, changed ` +
      "model, swap during generation",
    ignore: e2eUnavailable(mode) || llamaMissing(),
    sanitizeResources: false,
    sanitizeOps: false,
    fn: (t) => withLlama(t, mode),
  });
}

async function withLlama(t: Deno.TestContext, mode: Mode) {
  const system = mode === "system";
  const target = await openTarget(
    mode,
    system ? ["/var/lib/lychd", "/etc/lychd", "/srv/lychd-models"] : [],
  );
  // The model: a folder of its own in system mode, under the user's home in user mode.
  const modelDir = system ? "/srv/lychd-models" : `${target.home}/lychd-models`;
  const { flags, scope } = modeOf(target);
  const sflag = system ? "--system " : "";
  const guest = target.run;
  const lychd = (...args: string[]) => target.lychd(...args);
  const activeIs = (engine: string) => assertActive(target, engine);
  try {
    await buildLlamaImage(target);
    const fake = await buildFakeEngineImage(target);
    const prometheus = await buildPrometheusImage(target);
    assertEquals((await guest(["mkdir", "-p", modelDir])).code, 0);
    for (const name of ["tiny.gguf", "tiny2.gguf"]) {
      const cp = await guest(["cp", `${LLAMA_DIR}/tiny.gguf`, `${modelDir}/${name}`]);
      assertEquals(cp.code, 0, cp.stderr);
    }
    const write = (model: string) => writeConfig(target, config(fake, prometheus, modelDir, model));

    await t.step(
      "init starts the harvester; the scribe's missing image is reported",
      async () => {
        assertEquals((await write("tiny.gguf")).code, 0);
        const init = await lychd("init", ...flags);
        assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
        assertMatch(init.stdout, /Started harvester\.service/);
        assertMatch(
          init.stdout,
          /scribe\.service is not started: its image \S+ is not on this host yet/,
        );
        assertMatch(
          init.stdout,
          new RegExp(
            `Next: lychd pull${system ? " --system" : ""}, then lychd swap ${sflag}llama`,
          ),
        );
        const h = await guest([
          "systemctl",
          ...scope,
          "is-active",
          "harvester.service",
        ]);
        assertEquals(h.stdout.trim(), "active");
      },
    );

    await t.step("swap to the real llama.cpp server: ready, and it answers", async () => {
      const r = await lychd("swap", ...flags, "llama");
      assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
      console.log(`  ${r.stdout.trim()}`);
      // The warm-up: the real server answered one short completion before the swap returned.
      assertMatch(r.stdout, /, model loaded [0-9.]+ s, first request [0-9.]+ s\)$/m);
      await activeIs("llama");
      assertDeep(await models(target), [`${modelDir}/tiny.gguf`]);
      const c = await guest([
        "curl",
        "-fsS",
        "--max-time",
        "30",
        "-H",
        "content-type: application/json",
        "-d",
        '{"prompt":"hello","max_tokens":8}',
        "http://127.0.0.1:8081/v1/completions",
      ]);
      assertEquals(c.code, 0, c.stderr);
      assert(JSON.parse(c.stdout).choices.length === 1, c.stdout);
    });

    await t.step(
      "a swap to an engine that crashes at start rolls back within seconds",
      async () => {
        const t0 = performance.now();
        const r = await lychd("swap", ...flags, "crashy", "--timeout", "5m");
        const took = performance.now() - t0;
        assertEquals(r.code, EXIT.ROLLED_BACK, r.stdout + r.stderr);
        assertMatch(r.stderr, /crashy failed: the (engine exited|unit is failed)/);
        assertMatch(r.stderr, /llama serves again, as before/);
        // The journal excerpt: the engine's lines, no blank line after each.
        const excerpt = r.stderr.slice(
          r.stderr.indexOf("journal:"),
          r.stderr.indexOf("Rolling back"),
        );
        assert(!/\n {2}\| *\n/.test(excerpt), excerpt);
        console.log(`  crash at start -> rolled back in ${(took / 1000).toFixed(1)} s`);
        assert(took < 60_000, `took ${took} ms, the start timeout is 5 min`);
        await activeIs("llama");
      },
    );

    await t.step(
      "the running engine's model changed: init says so, swap restarts it",
      async () => {
        assertEquals((await write("tiny2.gguf")).code, 0);
        const init = await lychd("init", ...flags);
        assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
        assertMatch(
          init.stdout,
          new RegExp(
            "soulstone-llama\\.service still runs with its old unit: " +
              `\`lychd swap ${sflag}llama\` restarts it`,
          ),
        );
        assertDeep(
          await models(target),
          [`${modelDir}/tiny.gguf`],
          "still the old model before the swap",
        );
        const r = await lychd("swap", ...flags, "llama");
        assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
        assertMatch(r.stdout, /^llama ready in /);
        assertDeep(await models(target), [`${modelDir}/tiny2.gguf`]);
      },
    );

    await t.step(
      "swap away from llama.cpp during a generation: the drain waits (bounded), then its short " +
        "stop timeout, not 30 s",
      async () => {
        // A file of this run's own: /tmp may be shared with an earlier run as another user, whose
        // file this user could not overwrite (the shell's redirect fails, and curl never runs).
        const streamFile = `/tmp/lychd-stream-${crypto.randomUUID().slice(0, 8)}.txt`;
        // A long streaming generation (up to the 32768-token context) in the background.
        const stream = guest([
          "sh",
          "-c",
          `curl -sS -N --max-time 60 -H 'content-type: application/json' ` +
          `-d '{"prompt":"once upon a time","max_tokens":30000,"stream":true}' ` +
          `http://127.0.0.1:8081/v1/completions > ${streamFile}; echo curl=$?`,
        ]);
        let started = false;
        const deadline = Date.now() + 90_000;
        while (!started && Date.now() < deadline) {
          const seen = await guest([
            "sh",
            "-c",
            `wc -c < ${streamFile} 2>/dev/null || echo 0`,
          ]);
          started = Number(seen.stdout.trim()) > 200;
          if (!started) await new Promise((r) => setTimeout(r, 100));
        }
        const head = async () => (await guest(["sh", "-c", `head -c 600 ${streamFile}`])).stdout;
        assert(started, `the generation did not start: ${await head()}`);
        // Behind the gate the swap first waits for the generation (the drain), here for 3 s.
        const r = await lychd("swap", ...flags, "vllm", "--drain-timeout", "3s");
        assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
        console.log(`  swap during generation: ${r.stdout.trim()}`);
        assertMatch(r.stderr, /draining llama: 1 requests in flight/, await head());
        assertMatch(
          r.stderr,
          /drain timeout \(3\.0 s\): cutting off 1 requests still in flight, then stopping llama/,
        );
        // The report counts the drain: clients were held from its start. It waited out its 3 s
        // (the generation lasts longer); how much longer the cut took depends on the machine.
        const drained = Number(
          r.stdout.match(/^vllm ready in [0-9.]+ s \(drained llama ([0-9.]+) s, /)?.[1],
        );
        assert(drained >= 3, r.stdout);
        const stopped = Number(r.stdout.match(/old engine stopped ([0-9.]+) s/)?.[1]);
        assert(Number.isFinite(stopped), r.stdout);
        // Its own 5 s stop timeout, then a kill: well under the 30 s default on any machine.
        assert(stopped < 25, `llama.cpp's stop took ${stopped} s`);
        const s = await stream;
        console.log(`  the streaming client: ${s.stdout.trim()}`);
        // Cut off mid-stream (curl 18: a partial transfer) by the gate after the drain timeout.
        assertMatch(s.stdout, /curl=18/);
        await guest(["rm", "-f", streamFile]);
        await activeIs("vllm");
      },
    );
  } finally {
    await target.close();
  }
}
