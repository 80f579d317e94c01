/**
 * End to end with a REAL llama.cpp server (llama-server and a tiny GGUF, ../shared/engines/
 * llama.cpp/) under real systemd 252, Quadlet and Podman (the sandbox): what an operator hit.
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
  buildPrometheusImage,
  guest,
  lychd,
  ROOT,
  sandboxUnavailable,
  sdsandbox,
} from "./support/sandbox.ts";

const LLAMA_DIR = `${ROOT}/../shared/engines/llama.cpp`;
const MODELS = "/srv/lychd-models";
const LLAMA_IMAGE = "localhost/lychd-real-llama-server:1";

function llamaMissing(): boolean {
  try {
    Deno.statSync(`${LLAMA_DIR}/llama-server`);
    return false;
  } catch {
    console.error(`\n!!! SKIPPING the real llama.cpp e2e test: ${LLAMA_DIR} not found\n`);
    return true;
  }
}

function config(fake: string, prometheus: string, model: string): string {
  return `engines: [llama, vllm, crashy]
active: llama
gpu: cpu
harvester:
  image: ${prometheus}
  scrape_interval: 1s
cartridges:
  llama:
    image: ${LLAMA_IMAGE}
    model: ${MODELS}/${model}
    args: [--ctx-size, "2048", --threads, "2"]
  vllm:
    image: ${fake}
    model: org/vllm-model
    args: [--fake-load-ms, "300"]
  crashy:
    # The real server, told to load a file that does not exist: it exits at once, every time.
    image: ${LLAMA_IMAGE}
    port: 8090
    model: never-loaded
    args: [-m, ${MODELS}/missing.gguf, --host, 0.0.0.0, --port, "8090"]
`;
}

async function assertActive(engine: string) {
  for (const e of ["llama", "vllm", "crashy"]) {
    const r = await guest(["systemctl", "is-active", `soulstone-${e}.service`]);
    assertEquals(r.stdout.trim(), e === engine ? "active" : "inactive", `soulstone-${e}`);
  }
}

async function models(): Promise<string[]> {
  const r = await guest(["curl", "-fsS", "--max-time", "5", "http://127.0.0.1:8081/v1/models"]);
  assertEquals(r.code, 0, r.stderr);
  return JSON.parse(r.stdout).data.map((m: { id: string }) => m.id);
}

Deno.test({
  name:
    "e2e with a real llama.cpp server: watchers, crash at start, changed model, swap during generation",
  ignore: sandboxUnavailable() || llamaMissing(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const up = await sdsandbox([
      "up",
      "--private",
      "/var/lib/lychd",
      "--private",
      "/etc/lychd",
      "--private",
      MODELS,
    ]);
    assertEquals(up.code, 0, up.stderr);
    try {
      const server = await Deno.realPath(`${LLAMA_DIR}/llama-server`);
      const img = await sdsandbox([
        "image",
        LLAMA_IMAGE,
        "--from-host",
        server,
        "--change",
        `ENTRYPOINT ["${server}"]`,
      ]);
      assertEquals(img.code, 0, img.stderr);
      const fake = await buildFakeEngineImage();
      const prometheus = await buildPrometheusImage();
      for (const name of ["tiny.gguf", "tiny2.gguf"]) {
        const cp = await guest(["cp", `${LLAMA_DIR}/tiny.gguf`, `${MODELS}/${name}`]);
        assertEquals(cp.code, 0, cp.stderr);
      }
      const write = (model: string) =>
        guest(["sh", "-c", "cat > /etc/lychd/lychd.yaml"], config(fake, prometheus, model));

      await t.step(
        "init starts the harvester; the scribe's missing image is reported",
        async () => {
          assertEquals((await write("tiny.gguf")).code, 0);
          const init = await lychd("init", "--system");
          assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
          assertMatch(init.stdout, /Started harvester\.service/);
          assertMatch(
            init.stdout,
            /scribe\.service is not started: its image \S+ is not on this host yet/,
          );
          assertMatch(init.stdout, /Next: lychd pull --system, then lychd swap --system llama/);
          const h = await guest(["systemctl", "is-active", "harvester.service"]);
          assertEquals(h.stdout.trim(), "active");
        },
      );

      await t.step("swap to the real llama.cpp server: ready, and it answers", async () => {
        const r = await lychd("swap", "--system", "llama");
        assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
        console.log(`  ${r.stdout.trim()}`);
        await assertActive("llama");
        assertDeep(await models(), [`${MODELS}/tiny.gguf`]);
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
          const r = await lychd("swap", "--system", "crashy", "--timeout", "5m");
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
          await assertActive("llama");
        },
      );

      await t.step(
        "the running engine's model changed: init says so, swap restarts it",
        async () => {
          assertEquals((await write("tiny2.gguf")).code, 0);
          const init = await lychd("init", "--system");
          assertEquals(init.code, EXIT.OK, init.stdout + init.stderr);
          assertMatch(
            init.stdout,
            /soulstone-llama\.service still runs with its old unit: `lychd swap --system llama` restarts it/,
          );
          assertDeep(
            await models(),
            [`${MODELS}/tiny.gguf`],
            "still the old model before the swap",
          );
          const r = await lychd("swap", "--system", "llama");
          assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
          assertMatch(r.stdout, /^llama ready in /);
          assertDeep(await models(), [`${MODELS}/tiny2.gguf`]);
        },
      );

      await t.step(
        "swap away from llama.cpp during a generation: its short stop timeout, not 30 s",
        async () => {
          // A long streaming generation (the tiny model never ends by itself) in the background.
          const stream = guest([
            "sh",
            "-c",
            `curl -sS -N --max-time 60 -H 'content-type: application/json' ` +
            `-d '{"prompt":"once upon a time","max_tokens":20000,"stream":true}' ` +
            "http://127.0.0.1:8081/v1/completions > /tmp/lychd-stream.txt; echo curl=$?",
          ]);
          for (let i = 0; i < 100; i++) {
            const seen = await guest([
              "sh",
              "-c",
              "wc -c < /tmp/lychd-stream.txt 2>/dev/null || echo 0",
            ]);
            if (Number(seen.stdout.trim()) > 200) break;
            await new Promise((r) => setTimeout(r, 100));
          }
          const r = await lychd("swap", "--system", "vllm");
          assertEquals(r.code, EXIT.OK, r.stdout + r.stderr);
          console.log(`  swap during generation: ${r.stdout.trim()}`);
          const stopped = Number(r.stdout.match(/old engine stopped ([0-9.]+) s/)?.[1]);
          assert(Number.isFinite(stopped), r.stdout);
          assert(stopped < 10, `llama.cpp's stop took ${stopped} s`);
          const s = await stream;
          console.log(`  the streaming client: ${s.stdout.trim()}`);
          await assertActive("vllm");
        },
      );
    } finally {
      const down = await sdsandbox(["down"]);
      assertEquals(down.code, 0, down.stderr);
    }
  },
});
