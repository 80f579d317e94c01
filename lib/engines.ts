/**
 * The built-in cartridges as data. Everything engine-specific that the unit model needs lives
 * here; nothing else in lychd knows an engine by name. Facts and sources: docs/engines.md.
 */

export type GpuVendor = "nvidia" | "amd" | "cpu";

/**
 * The routes an engine that sleeps speaks (docs/engines.md, "Sleep and wake"): vLLM's /sleep,
 * /wake_up and /is_sleeping, or SGLang's /release_memory_occupation and /resume_memory_occupation.
 */
export type SleepApi = "vllm" | "sglang";

/**
 * What an engine that sleeps is started with: vLLM offers /sleep only with --enable-sleep-mode,
 * and the routes exist only in its development mode (docs/engines.md, "Sleep and wake").
 */
export const SLEEP_FLAGS: Record<SleepApi, { args: string[]; env: Record<string, string> }> = {
  vllm: { args: ["--enable-sleep-mode"], env: { VLLM_SERVER_DEV_MODE: "1" } },
  // The memory saver releases on request; the CPU backup is what brings the weights back.
  sglang: { args: ["--enable-memory-saver", "--enable-weights-cpu-backup"], env: {} },
};

/**
 * The sleep levels each API can keep its promise at. SGLang resumes its weights only from the
 * host copy `--enable-weights-cpu-backup` keeps: there is no level 2 (weights dropped, reloaded).
 */
export const SLEEP_LEVELS: Record<SleepApi, { levels: (1 | 2)[]; why: string }> = {
  vllm: { levels: [1, 2], why: "" },
  sglang: {
    levels: [1],
    why: "SGLang resumes its weights only from the host copy it keeps at level 1",
  },
};

/**
 * Where an engine's container listens (docs/engines.md, "The engine's network"): `private` (the
 * default), a network of its own with one port published on 127.0.0.1; `host`, on the host's own
 * network, bound by lychd to 127.0.0.1: no network for Podman to set up and tear down at each
 * swap, but no network isolation either.
 */
export type Network = "host" | "private";

/** The address and port lychd tells an engine to listen on. */
export interface Listen {
  host: string;
  port: number;
}

/** Which metric names an engine exports; the harvester's rules map each dialect to `lychd:`. */
export type MetricsDialect = "vllm" | "sglang" | "llamacpp";

export interface Cartridge {
  name: string;
  /** Human name, e.g. for the dashboard title. */
  title: string;
  /** Pinned image per GPU vendor; null where the project publishes none. */
  images: Record<GpuVendor, string | null>;
  /** Port the server listens on inside a private network; published on 127.0.0.1. */
  port: number;
  healthPath: string;
  metricsPath: string;
  dialect: MetricsDialect | null;
  defaultModel: string;
  /** The words after the image (Quadlet `Exec=`), metrics switched on, listening on `listen`. */
  command(model: string, listen: Listen): string[];
  /** PyTorch engines need a large /dev/shm for tensor-parallel workers (docs/engines.md §1.4). */
  ipcHost: boolean;
  /** Where the engine looks for Hugging Face downloads inside the container. */
  modelCacheTarget: string;
  /** Extra environment the engine needs so its cache lands in the mounted folder. */
  env: Record<string, string>;
  /**
   * `lychd pull --models`: the command (entrypoint first) that downloads `model` into the mounted
   * Hugging Face cache with the engine's own image; null = the engine fetches it itself.
   */
  download(model: string): string[] | null;
  /** What keeps the engine from reaching the network (`offline: true` in lychd.yaml). */
  offline: { env: Record<string, string>; args: string[] };
  /**
   * How long a stop may take before the engine is killed (stop_timeout's default): what the
   * engine needs to finish its requests and exit. docs/engines.md says how each one shuts down.
   */
  stopTimeoutSec: number;
  /**
   * The engine's compile, kernel and JIT caches: environment variable -> folder under
   * COMPILE_CACHE_MOUNT. Inside the container they would go with the container at every stop;
   * pointed into a mounted folder, the next start of the same model finds them
   * (docs/engines.md, "Compile and JIT caches", has each variable's source).
   */
  compileCaches: Record<string, string>;
  /** The sleep routes it speaks (`sleep:` in lychd.yaml), or null, and why not. */
  sleepApi: SleepApi | null;
  noSleep?: string;
}

/** Where an engine's compile cache folder is mounted in its container. */
export const COMPILE_CACHE_MOUNT = "/lychd/cache";

export const BUILTIN_CARTRIDGES: readonly Cartridge[] = [
  {
    name: "vllm",
    title: "vLLM",
    images: {
      nvidia: "docker.io/vllm/vllm-openai:v0.33.0",
      amd: "docker.io/vllm/vllm-openai-rocm:v0.33.0",
      cpu: "docker.io/vllm/vllm-openai-cpu:v0.33.0-x86_64",
    },
    port: 8000,
    healthPath: "/health",
    metricsPath: "/metrics",
    dialect: "vllm",
    defaultModel: "Qwen/Qwen2.5-7B-Instruct",
    // The image's ENTRYPOINT is already `vllm serve`; metrics are on by default.
    command: (model, { host, port }) => [model, "--host", host, "--port", String(port)],
    ipcHost: true,
    modelCacheTarget: "/root/.cache/huggingface",
    env: {},
    offline: { env: { HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" }, args: [] },
    // huggingface_hub's CLI ships in the image (vLLM depends on it).
    download: (model) => model.startsWith("/") ? null : ["hf", "download", model],
    stopTimeoutSec: 30,
    compileCaches: {
      VLLM_CACHE_ROOT: "vllm",
      TRITON_CACHE_DIR: "triton",
      TORCHINDUCTOR_CACHE_DIR: "torchinductor",
      FLASHINFER_WORKSPACE_BASE: "flashinfer",
      CUDA_CACHE_PATH: "cuda",
    },
    sleepApi: "vllm",
  },
  {
    name: "sglang",
    title: "SGLang",
    images: {
      nvidia: "docker.io/lmsysorg/sglang:v0.5.23",
      amd: "docker.io/lmsysorg/sglang:v0.5.23-rocm700-mi30x",
      cpu: null,
    },
    port: 30000,
    healthPath: "/health",
    metricsPath: "/metrics",
    dialect: "sglang",
    defaultModel: "Qwen/Qwen2.5-7B-Instruct",
    // The image has no server entrypoint; without --enable-metrics /metrics is a 404.
    command: (model, { host, port }) => [
      "python3",
      "-m",
      "sglang.launch_server",
      "--model-path",
      model,
      "--host",
      host,
      "--port",
      String(port),
      "--enable-metrics",
    ],
    ipcHost: true,
    modelCacheTarget: "/root/.cache/huggingface",
    env: {},
    offline: { env: { HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" }, args: [] },
    download: (model) => model.startsWith("/") ? null : ["hf", "download", model],
    stopTimeoutSec: 30,
    compileCaches: {
      SGLANG_JIT_CACHE_ROOT: "sglang",
      TRITON_CACHE_DIR: "triton",
      TORCHINDUCTOR_CACHE_DIR: "torchinductor",
      FLASHINFER_WORKSPACE_BASE: "flashinfer",
      CUDA_CACHE_PATH: "cuda",
    },
    // /release_memory_occupation and /resume_memory_occupation (docs/engines.md, "Sleep and
    // wake"); no route says whether it is released: lychd's mark does (docs/warm-swaps.md).
    sleepApi: "sglang",
  },
  {
    name: "llama",
    title: "llama.cpp",
    images: {
      nvidia: "ghcr.io/ggml-org/llama.cpp:server-cuda-b10587",
      amd: "ghcr.io/ggml-org/llama.cpp:server-rocm-b10587",
      cpu: "ghcr.io/ggml-org/llama.cpp:server-b10587",
    },
    // Kept at the image's own 8080 in a private network: its HEALTHCHECK is hard-wired to it.
    port: 8080,
    healthPath: "/health",
    metricsPath: "/metrics",
    dialect: "llamacpp",
    defaultModel: "Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
    // A path is a local GGUF file, anything else a Hugging Face repo. --alias makes
    // /v1/models list the configured name instead of the file path.
    command: (model, { host, port }) => [
      ...(model.startsWith("/") ? ["-m", model] : ["-hf", model]),
      "--alias",
      model,
      "--host",
      host,
      "--port",
      String(port),
      "--metrics",
    ],
    ipcHost: false,
    modelCacheTarget: "/root/.cache/huggingface",
    env: { LLAMA_CACHE: "/root/.cache/huggingface/llama.cpp" },
    offline: { env: {}, args: ["--offline"] },
    // llama-server -hf fetches the GGUF into LLAMA_CACHE on its first start; there is no
    // download-only command in the image.
    download: () => null,
    // After SIGTERM llama-server stops generating and closes its port at once, then exits or
    // hangs until killed: waiting longer only keeps port 8081 shut (docs/engines.md).
    stopTimeoutSec: 5,
    // ggml's kernels are compiled ahead of time; the driver's JIT of their PTX (a GPU newer
    // than the build) is what can be kept.
    compileCaches: { CUDA_CACHE_PATH: "cuda" },
    sleepApi: null,
    noSleep: "llama.cpp has no sleep or wake route (its --sleep-idle-seconds unloads and reloads " +
      "from disk); a swap away from it stops it",
  },
];

export const BUILTIN_NAMES: readonly string[] = BUILTIN_CARTRIDGES.map((c) => c.name);

export function builtinCartridge(name: string): Cartridge | undefined {
  return BUILTIN_CARTRIDGES.find((c) => c.name === name);
}

export const DEFAULT_ENGINES: readonly string[] = ["vllm", "sglang", "llama"];

/** The standard interface every soulstone serves on the host (API and /metrics). */
export const STANDARD_PORT = 8081;

export const PROMETHEUS_IMAGE = "docker.io/prom/prometheus:v3.5.0";
export const PROMETHEUS_PORT = 9090;
export const GRAFANA_IMAGE = "docker.io/grafana/grafana:12.2.0";
export const GRAFANA_PORT = 3000;
/** Fixed so that every provisioned dashboard can name its datasource. */
export const DATASOURCE_UID = "lychd-prometheus";
