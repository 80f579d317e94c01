/**
 * Every rendered set goes through the REAL Quadlet generator and `systemd-analyze verify`,
 * and the podman command line Quadlet generates is decoded by systemd's rules and compared
 * word for word with what lychd means to run.
 */
import { assert, assertDeep, assertEquals } from "./support/assert.ts";
import type { Override } from "../lib/config/yaml.ts";
import type { Mode } from "../lib/paths.ts";
import { execStartArgv } from "./support/systemd_exec.ts";
import { requireTools } from "./support/tools.ts";
import {
  planFor,
  quadlet,
  systemdVerify,
  TEST_HOME,
  unitFiles,
  unitValues,
} from "./support/units.ts";

const ignore = requireTools("quadlet", "systemdAnalyze", "podman");

/** Render, generate, verify; returns the generated services. Asserts there are no findings. */
async function generate(yaml: string | null, overrides: Override[], mode: Mode) {
  const units = unitFiles(planFor(yaml, overrides, mode));
  const q = await quadlet(units, mode);
  assertEquals(q.stderr, "", "Quadlet reported problems");
  assertEquals(q.code, 0);
  const expected = Object.keys(units).map((f) => f.replace(/\.container$/, ".service")).sort();
  assertDeep(Object.keys(q.services).sort(), expected);
  assertEquals(
    await systemdVerify(q.services, mode),
    "",
    "systemd-analyze verify printed findings",
  );
  return q.services;
}

/** The words podman receives after the image: what the engine itself is started with. */
function engineArgv(service: string, image: string): string[] {
  const [execStart] = unitValues(service, "Service", "ExecStart");
  const argv = execStartArgv(execStart);
  return argv.slice(argv.indexOf(image) + 1);
}

function podmanArgv(service: string): string[] {
  return execStartArgv(unitValues(service, "Service", "ExecStart")[0]);
}

for (const mode of ["user", "system"] as const) {
  Deno.test({
    name: `quadlet: default engines in ${mode} mode generate and verify cleanly`,
    ignore,
    async fn() {
      const s = await generate(null, [], mode);
      assertDeep(unitValues(s["soulstone-vllm.service"], "Unit", "Conflicts"), [
        "soulstone-llama.service soulstone-sglang.service",
      ]);
      // One ordering dependency per pair, lexical: llama < sglang < vllm.
      const after = (name: string) =>
        unitValues(s[`soulstone-${name}.service`], "Unit", "After").join(" ").split(" ")
          .filter((u) => u.startsWith("soulstone-"));
      assertDeep(after("llama"), []);
      assertDeep(after("sglang"), ["soulstone-llama.service"]);
      assertDeep(after("vllm"), ["soulstone-llama.service", "soulstone-sglang.service"]);
      const target = mode === "user" ? "default.target" : "multi-user.target";
      assertDeep(unitValues(s["soulstone-vllm.service"], "Install", "WantedBy"), [target]);
      assertDeep(unitValues(s["soulstone-sglang.service"], "Install", "WantedBy"), []);
      assertDeep(unitValues(s["soulstone-llama.service"], "Install", "WantedBy"), []);
      assertDeep(unitValues(s["harvester.service"], "Install", "WantedBy"), [target]);
      assertDeep(unitValues(s["scribe.service"], "Install", "WantedBy"), [target]);

      const cache = mode === "user" ? `${TEST_HOME}/.cache/huggingface` : "/var/lib/lychd/models";
      const compile = mode === "user" ? `${TEST_HOME}/.cache/lychd` : "/var/lib/lychd/cache";
      const vllmTail = [
        "--device",
        "nvidia.com/gpu=all",
        "-v",
        `${cache}:/root/.cache/huggingface:z`,
        // The compile and JIT caches, kept in lychd's folder for the engine.
        "-v",
        `${compile}/vllm:/lychd/cache:z`,
        // Behind the gate (the default), on the engine port; the gate holds 8081.
        "--publish",
        "127.0.0.1:18081:8000",
        "--ipc=host",
        "--pull=never",
        "--stop-timeout=30",
        "docker.io/vllm/vllm-openai:v0.33.0",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
      ];
      // (The --env pairs, between the mounts and --publish, are checked on their own below.)
      const vllmArgv = podmanArgv(s["soulstone-vllm.service"]);
      const withoutEnv = vllmArgv.filter((w, i) => w !== "--env" && vllmArgv[i - 1] !== "--env");
      assertDeep(withoutEnv.slice(-vllmTail.length), vllmTail);
      // Each cache's variable reaches the engine, pointing into that mount.
      const envOf = (service: string) => {
        const argv = podmanArgv(s[service]);
        return argv.flatMap((w, i) => (argv[i - 1] === "--env" ? [w] : [])).sort();
      };
      assertDeep(envOf("soulstone-vllm.service"), [
        "CUDA_CACHE_PATH=/lychd/cache/cuda",
        "FLASHINFER_WORKSPACE_BASE=/lychd/cache/flashinfer",
        "TORCHINDUCTOR_CACHE_DIR=/lychd/cache/torchinductor",
        "TRITON_CACHE_DIR=/lychd/cache/triton",
        "VLLM_CACHE_ROOT=/lychd/cache/vllm",
      ]);
      assert(
        envOf("soulstone-sglang.service").includes("SGLANG_JIT_CACHE_ROOT=/lychd/cache/sglang"),
      );
      assert(
        podmanArgv(s["soulstone-sglang.service"]).includes(`${compile}/sglang:/lychd/cache:z`),
      );
      assertDeep(
        envOf("soulstone-llama.service").filter((e) => e.startsWith("CUDA")),
        ["CUDA_CACHE_PATH=/lychd/cache/cuda"],
      );
      assertDeep(engineArgv(s["soulstone-sglang.service"], "docker.io/lmsysorg/sglang:v0.5.23"), [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
        "--enable-metrics",
      ]);
      const llama = podmanArgv(s["soulstone-llama.service"]);
      assertEquals(llama[llama.indexOf("--publish") + 1], "127.0.0.1:18081:8080");
      assertDeep(
        engineArgv(s["soulstone-llama.service"], "ghcr.io/ggml-org/llama.cpp:server-cuda-b10587"),
        [
          "-hf",
          "Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
          "--alias",
          "Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
          "--host",
          "0.0.0.0",
          "--port",
          "8080",
          "--metrics",
        ],
      );
      const harvester = podmanArgv(s["harvester.service"]);
      assertEquals(harvester[harvester.indexOf("--network") + 1], "host");
      assert(harvester.includes("--web.listen-address=127.0.0.1:9090"));
      const scribe = podmanArgv(s["scribe.service"]);
      assert(scribe.includes("GF_SERVER_HTTP_ADDR=127.0.0.1"));
      assertEquals(scribe[scribe.indexOf("--secret") + 1], "lychd-grafana-admin");
    },
  });
}

Deno.test({
  name:
    "quadlet: values special to systemd reach podman unchanged (%, $, spaces, quotes, backslash)",
  ignore,
  async fn() {
    const tricky = [
      "--chat-template",
      "{% for m in messages %}{{ m.content }} $HOME ${USER} %h %n 'single' \"double\" back\\slash{% endfor %}",
      "--api-key-file=/run/secrets/x",
      "100%",
      "$$",
      " leading and trailing spaces ",
    ];
    const yaml = `
engines: [vllm, llama]
cartridges:
  vllm:
    model: "org/model with space %n $X"
    args: ${JSON.stringify(tricky)}
    env:
      PROMPT_PREFIX: "say \\"hi\\" 100% of $TIME"
      PLAIN: ok
  llama:
    model: /models/tiny-llama.gguf
`;
    const s = await generate(yaml, [], "system");
    assertDeep(engineArgv(s["soulstone-vllm.service"], "docker.io/vllm/vllm-openai:v0.33.0"), [
      "org/model with space %n $X",
      "--host",
      "0.0.0.0",
      "--port",
      "8000",
      ...tricky,
    ]);
    const argv = podmanArgv(s["soulstone-vllm.service"]);
    const envs = argv.flatMap((w, i) => (argv[i - 1] === "--env" ? [w] : []));
    assertDeep(envs.filter((e) => !e.includes("=/lychd/cache/")).sort(), [
      "PLAIN=ok",
      'PROMPT_PREFIX=say "hi" 100% of $TIME',
    ]);
    const llama = podmanArgv(s["soulstone-llama.service"]);
    // The model file itself, read-only; never its folder (which :z would relabel as a whole).
    assert(
      llama.includes("/models/tiny-llama.gguf:/models/tiny-llama.gguf:ro,z"),
      "the model file is mounted read-only",
    );
    assert(!llama.includes("/models:/models"), "the model's folder is mounted");
    assertDeep(
      engineArgv(s["soulstone-llama.service"], "ghcr.io/ggml-org/llama.cpp:server-cuda-b10587")
        .slice(0, 4),
      [
        "-m",
        "/models/tiny-llama.gguf",
        "--alias",
        "/models/tiny-llama.gguf",
      ],
    );
  },
});

Deno.test({
  name: "quadlet: a custom engine, chosen GPUs, secrets, AMD and CPU variants",
  ignore,
  async fn() {
    const yaml = `
engines: [llama, tabby, vllm]
active: tabby
gpu: nvidia:0,1
secrets: {HF_TOKEN: lychd-hf-token}
cartridges:
  tabby:
    image: ghcr.io/theroyallab/tabbyapi:v0.9.0
    port: 5000
    health_path: /health
    metrics_path: /custom/metrics
    args: [python3, main.py, --port, "5000"]
    secrets: {TABBY_API_KEY: tabby-key}
    stop_timeout: 2m
  vllm:
    gpu: amd
  llama:
    gpu: cpu
`;
    const s = await generate(yaml, [], "user");
    const tabby = podmanArgv(s["soulstone-tabby.service"]);
    assertDeep(tabby.filter((_, i) => tabby[i - 1] === "--device"), [
      "nvidia.com/gpu=0",
      "nvidia.com/gpu=1",
    ]);
    assertDeep(tabby.filter((_, i) => tabby[i - 1] === "--secret").sort(), [
      "lychd-hf-token,type=env,target=HF_TOKEN",
      "tabby-key,type=env,target=TABBY_API_KEY",
    ]);
    assert(tabby.includes("--stop-timeout=120"));
    assertDeep(unitValues(s["soulstone-tabby.service"], "Service", "TimeoutStopSec"), ["135"]);
    assertDeep(engineArgv(s["soulstone-tabby.service"], "ghcr.io/theroyallab/tabbyapi:v0.9.0"), [
      "python3",
      "main.py",
      "--port",
      "5000",
    ]);
    assertDeep(unitValues(s["soulstone-tabby.service"], "Install", "WantedBy"), ["default.target"]);
    assertDeep(unitValues(s["soulstone-vllm.service"], "Install", "WantedBy"), []);
    const vllm = podmanArgv(s["soulstone-vllm.service"]);
    assertDeep(vllm.filter((_, i) => vllm[i - 1] === "--device"), ["/dev/kfd", "/dev/dri"]);
    assert(vllm.includes("--group-add=keep-groups"));
    assert(vllm.includes("docker.io/vllm/vllm-openai-rocm:v0.33.0"));
    const llama = podmanArgv(s["soulstone-llama.service"]);
    assert(!llama.includes("--device"), "CPU engines get no device");
    assert(llama.includes("ghcr.io/ggml-org/llama.cpp:server-b10587"));
  },
});

Deno.test({
  name: "quadlet: a single engine has no Conflicts= or After= at all",
  ignore,
  async fn() {
    const s = await generate(
      null,
      [{ path: ["engines"], value: ["llama"], flag: "--engines" }],
      "user",
    );
    assertDeep(unitValues(s["soulstone-llama.service"], "Unit", "Conflicts"), []);
    assertDeep(
      unitValues(s["soulstone-llama.service"], "Unit", "After").filter((a) =>
        a.includes("soulstone")
      ),
      [],
    );
  },
});

Deno.test({
  name: "quadlet: the glob from the seed card is what systemd-analyze catches (the check can fail)",
  ignore,
  async fn() {
    const units = unitFiles(planFor(null, [], "system"));
    units["soulstone-vllm.container"] = units["soulstone-vllm.container"].replace(
      /^Conflicts=.*$/m,
      "Conflicts=soulstone-*.service",
    );
    const q = await quadlet(units, "system");
    const findings = await systemdVerify(q.services, "system");
    assert(findings.includes("soulstone-*.service"), findings);
  },
});

Deno.test({
  name: "quadlet: offline: true keeps every engine off the network; soulstones never pull",
  ignore,
  async fn() {
    const s = await generate("offline: true\n", [], "user");
    const env = (name: string) => {
      const argv = podmanArgv(s[`soulstone-${name}.service`]);
      // The compile cache variables are there in every mode (checked above).
      return argv.filter((w, i) => argv[i - 1] === "--env" && !w.includes("=/lychd/cache/"));
    };
    assertDeep(env("vllm").sort(), ["HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"]);
    assertDeep(env("sglang").sort(), ["HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"]);
    const llama = engineArgv(
      s["soulstone-llama.service"],
      "ghcr.io/ggml-org/llama.cpp:server-cuda-b10587",
    );
    assertEquals(llama.at(-1), "--offline");
    for (const name of ["vllm", "sglang", "llama"]) {
      assert(podmanArgv(s[`soulstone-${name}.service`]).includes("--pull=never"), name);
    }
  },
});
