/**
 * Deciding what every unit says, as data (the podlet way): config + locations -> units.
 * Nothing here builds text; the templates in templates/ only lay these values out.
 */
import type {
  CartridgeSettings,
  GpuSpec,
  LychdConfig,
  SleepApi,
  SleepLevel,
} from "../config/types.ts";
import {
  builtinCartridge,
  type Cartridge,
  COMPILE_CACHE_MOUNT,
  GRAFANA_IMAGE,
  GRAFANA_PORT,
  type Network,
  PROMETHEUS_IMAGE,
  PROMETHEUS_PORT,
  SLEEP_FLAGS,
  STANDARD_PORT,
} from "../engines.ts";
import { ConfigError } from "../errors.ts";
import { defaultSettings, engineHostPort, enginePort } from "../config/validate.ts";
import type { Locations } from "../paths.ts";

/** One configured engine with every default filled in: what `swap` and `status` work from. */
export interface Engine {
  name: string;
  title: string;
  builtin: boolean;
  image: string;
  /** The port the engine listens on inside its container (its hostPort on the host's network). */
  port: number;
  /** The loopback port lychd reaches it on: 8081, or the gate's engine port behind the gate. */
  hostPort: number;
  /** On the host's network, bound to 127.0.0.1:hostPort; or private, published there. */
  network: Network;
  healthPath: string;
  metricsPath: string;
  /** The model the engine serves (its name in /v1/models), null if the engine is not told one. */
  model: string | null;
  gpu: GpuSpec;
  settings: CartridgeSettings;
  cartridge: Cartridge | null;
  /** A swap away puts it to sleep rather than stopping it (docs/warm-swaps.md); null: stops. */
  sleep: { level: SleepLevel; api: SleepApi } | null;
}

/** soulstone-<engine>.container */
export interface EngineUnit {
  fileName: string;
  serviceName: string;
  engine: Engine;
  hostPort: number;
  conflicts: string[];
  after: string[];
  devices: string[];
  volumes: string[];
  environment: [string, string][];
  secrets: string[];
  podmanArgs: string[];
  exec: string[];
  ipcHost: boolean;
  timeoutStartSec: number;
  timeoutStopSec: number;
  /**
   * An engine that sleeps: the variable in systemd's manager environment that lychd sets while
   * it sleeps, and that stops systemd from restarting it (awake) after a crash. null: not one.
   */
  asleepMark: string | null;
  /** Only the active engine starts at boot. */
  wantedBy: string | null;
}

/** lychd-gate.service: lychd itself on 8081, in front of the engines (not a container). */
export interface GateUnit {
  fileName: "lychd-gate.service";
  /** The program and arguments that run lychd (the binary, or deno with main.ts). */
  exec: string[];
  listen: string;
  enginePort: number;
  /**
   * A fingerprint of what the gate takes from lychd.yaml when it starts and keeps (its own
   * settings; each engine's name, model, port, health path and start timeout): the unit changes
   * with them, so init knows to restart the gate, and only then (a restart cuts the requests in
   * flight). Computed from the resolved values, so a default written out changes nothing.
   */
  settings: string;
  wantedBy: string;
  /** systemd's sandbox, in system mode only (a user's gate already runs as that user). */
  sandbox: GateSandbox | null;
}

/**
 * What the system gate may touch (docs/gate.md, "The gate's sandbox"). It stays uid 0, without
 * capabilities: it asks systemd which engine runs (root's private socket: no D-Bus needed), and on
 * demand it starts and stops engines itself.
 */
export interface GateSandbox {
  /** On demand, the gate runs swaps: unit files, lychd's data, the GPU devices (nvidia-smi). */
  swaps: boolean;
  /** Written besides its control folder. */
  readWritePaths: string[];
  /** PrivateTmp= would hide what the gate reads (lychd, lychd.yaml, the API keys) from /tmp. */
  privateTmp: boolean;
}

export const GATE_SERVICE = "lychd-gate.service";
/** The gate's own metrics, on 8081 beside the engine's /metrics. */
export const GATE_METRICS_PATH = "/lychd/metrics";

/** How `lychd` is run on this host, and which setup it is (from prepare()). */
export interface SelfCommand {
  program: string[];
  configPath: string;
}

export function gateUnit(config: LychdConfig, loc: Locations, self: SelfCommand): GateUnit {
  return {
    fileName: GATE_SERVICE,
    exec: [
      ...self.program,
      "gate",
      ...(loc.mode === "system" ? ["--system"] : []),
      "--config",
      self.configPath,
    ],
    listen: `${config.gate.listen === "all" ? "0.0.0.0" : "127.0.0.1"}:${STANDARD_PORT}`,
    enginePort: config.gate.enginePort,
    settings: fingerprint(JSON.stringify({
      gate: config.gate,
      engines: resolveEngines(config).map((e) => [
        e.name,
        e.model,
        e.hostPort,
        e.healthPath,
        e.settings.startTimeoutSec,
        e.sleep,
      ]),
    })),
    wantedBy: loc.bootTarget,
    sandbox: loc.mode === "system" ? gateSandbox(config, loc, self) : null,
  };
}

function gateSandbox(config: LychdConfig, loc: Locations, self: SelfCommand): GateSandbox {
  const swaps = config.gate.onDemand;
  const reads = [...self.program, self.configPath, config.gate.apiKeysFile ?? ""];
  const underTmp = reads.some((p) => /^\/(var\/)?tmp\//.test(p));
  return {
    swaps,
    readWritePaths: swaps ? [loc.dataDir, loc.quadletDir, loc.unitDir] : [],
    privateTmp: !underTmp,
  };
}

/** FNV-1a, 64 bits as hex: change detection, not security (the plan is pure and synchronous). */
function fingerprint(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(text)) {
    h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/** harvester.container: Prometheus. */
export interface PrometheusUnit {
  fileName: "harvester.container";
  image: string;
  configDir: string;
  retention: string;
  port: number;
  wantedBy: string;
}

/** scribe.container: Grafana. */
export interface GrafanaUnit {
  fileName: "scribe.container";
  image: string;
  datasourcesDir: string;
  dashboardProvidersDir: string;
  dashboardsDir: string;
  adminSecret: string;
  port: number;
  wantedBy: string;
}

export const GRAFANA_ADMIN_SECRET = "lychd-grafana-admin";
/** Where the scribe container sees the dashboards folder. */
export const GRAFANA_DASHBOARDS_MOUNT = "/var/lib/lychd-dashboards";

export function soulstoneService(engine: string): string {
  return `soulstone-${engine}.service`;
}

export { enginePort };

export function resolveEngines(config: LychdConfig): Engine[] {
  // validateConfig guarantees that an engine that sleeps has an API and the gate.
  return config.engines.map((name) => {
    const cartridge = builtinCartridge(name) ?? null;
    const settings = config.cartridges[name] ?? defaultSettings(name);
    const gpu = settings.gpu ?? config.gpu;
    const sleep = settings.sleep === null
      ? null
      : { level: settings.sleep, api: (cartridge?.sleepApi ?? settings.sleepApi)! };
    const hostPort = engineHostPort(config, name);
    const network = settings.network ?? "private";
    if (cartridge) {
      const image = settings.image ?? cartridge.images[gpu.vendor];
      if (!image) {
        throw new ConfigError([{
          key: `cartridges.${name}.image`,
          message: `${cartridge.title} publishes no ${gpu.vendor} image; set an image for it or ` +
            `choose another gpu`,
        }]);
      }
      return {
        name,
        title: cartridge.title,
        builtin: true,
        image,
        port: network === "host" ? hostPort : cartridge.port,
        hostPort,
        network,
        healthPath: cartridge.healthPath,
        metricsPath: cartridge.metricsPath,
        model: settings.model ?? cartridge.defaultModel,
        gpu,
        settings,
        cartridge,
        sleep,
      };
    }
    // validateConfig guarantees that a listed custom engine has an image and a port.
    return {
      name,
      title: name,
      builtin: false,
      image: settings.image!,
      port: settings.port!,
      hostPort,
      network,
      healthPath: settings.healthPath ?? "/health",
      metricsPath: settings.metricsPath ?? "/metrics",
      model: settings.model,
      gpu,
      settings,
      cartridge: null,
      sleep,
    };
  });
}

export function engineUnits(config: LychdConfig, loc: Locations): EngineUnit[] {
  const engines = resolveEngines(config);
  const names = engines.map((e) => e.name);
  const modelCache = config.modelCache ?? loc.modelCache;
  return engines.map((engine) => {
    const { settings, cartridge } = engine;
    // Engines that sleep run side by side (one awake, lychd's swap sees to it); every other pair
    // conflicts, so starting an engine that stops still stops every other one.
    const sleeps = (n: string) => engines.find((e) => e.name === n)!.sleep !== null;
    const siblings = names.filter((n) => n !== engine.name && !(sleeps(n) && engine.sleep)).sort();
    const volumes = [
      `${modelCache}:${cartridge?.modelCacheTarget ?? "/root/.cache/huggingface"}:z`,
    ];
    if (cartridge && engine.model?.startsWith("/")) {
      // The model itself (a GGUF file, or a model's folder), read-only, at its own path: never
      // its parent folder, which `:z` would relabel as a whole on an SELinux host (SECURITY.md).
      volumes.push(`${engine.model}:${engine.model}:ro,z`);
    }
    // Compile and JIT caches: kept in a folder of lychd's per engine, so a restart (the
    // container is removed at every stop) finds what the last start compiled.
    const cacheDir = compileCacheDir(loc, engine.name);
    const compileEnv: Record<string, string> = {};
    if (cartridge && Object.keys(cartridge.compileCaches).length > 0) {
      volumes.push(`${cacheDir}:${COMPILE_CACHE_MOUNT}:z`);
      for (const [name, sub] of Object.entries(cartridge.compileCaches)) {
        compileEnv[name] = `${COMPILE_CACHE_MOUNT}/${sub}`;
      }
    }
    for (const path of settings.caches) volumes.push(`${cacheDir}/${cacheSlug(path)}:${path}:z`);
    const secrets = { ...config.secrets, ...settings.secrets };
    return {
      fileName: `soulstone-${engine.name}.container`,
      serviceName: soulstoneService(engine.name),
      engine,
      hostPort: engine.hostPort,
      conflicts: siblings.map(soulstoneService),
      // One ordering dependency per pair, in one direction only (both would be a cycle).
      after: siblings.filter((n) => n < engine.name).map(soulstoneService),
      devices: gpuDevices(engine.gpu),
      volumes,
      environment: Object.entries({
        ...compileEnv,
        ...cartridge?.env,
        ...(config.offline ? cartridge?.offline.env : {}),
        ...(engine.sleep ? SLEEP_FLAGS[engine.sleep.api].env : {}),
        ...settings.env,
      }),
      secrets: Object.entries(secrets).map(([env, name]) => `${name},type=env,target=${env}`),
      podmanArgs: [
        ...(engine.gpu.vendor === "amd" && loc.mode === "user" ? ["--group-add=keep-groups"] : []),
        // An image's HEALTHCHECK asks the port it listens on in a network of its own (llama.cpp's:
        // 8080), where nothing listens on the host's; lychd probes the engine itself.
        ...(engine.network === "host" ? ["--no-healthcheck"] : []),
        `--stop-timeout=${settings.stopTimeoutSec}`,
      ],
      exec: [
        ...(cartridge
          ? cartridge.command(engine.model!, {
            // On the host's network, loopback only; in its own, every address of that network
            // (only the port published on 127.0.0.1 reaches it).
            host: engine.network === "host" ? "127.0.0.1" : "0.0.0.0",
            port: engine.port,
          })
          : []),
        ...(config.offline && cartridge ? cartridge.offline.args : []),
        ...settings.args,
        // Last: a custom engine's args are its whole command line (vLLM's model comes first).
        ...(engine.sleep ? SLEEP_FLAGS[engine.sleep.api].args : []),
      ],
      ipcHost: cartridge?.ipcHost ?? false,
      timeoutStartSec: settings.startTimeoutSec,
      // Podman's own stop timeout runs first; systemd's is the backstop that kills.
      timeoutStopSec: settings.stopTimeoutSec + 15,
      asleepMark: engine.sleep ? asleepMark(engine.name) : null,
      wantedBy: engine.name === config.active ? loc.bootTarget : null,
    };
  });
}

/**
 * The manager environment variable that says an engine is asleep (docs/warm-swaps.md, "A crash
 * while asleep"). Engine names are lowercase letters, digits and single dashes, so the mapping
 * is one to one.
 */
export function asleepMark(engine: string): string {
  return `LYCHD_ASLEEP_${engine.toUpperCase().replaceAll("-", "_")}`;
}

/** The host folder of an engine's compile caches. */
export function compileCacheDir(loc: Locations, engine: string): string {
  return `${loc.compileCacheDir}/${engine}`;
}

/** The host folders an engine's unit mounts for its compile caches ([]: it has none). */
export function engineCacheDirs(engine: Engine, loc: Locations): string[] {
  const dir = compileCacheDir(loc, engine.name);
  return [
    ...(engine.cartridge && Object.keys(engine.cartridge.compileCaches).length > 0 ? [dir] : []),
    ...engine.settings.caches.map((p) => `${dir}/${cacheSlug(p)}`),
  ];
}

/** Every engine's cache folders (created by init). */
export function compileCacheDirs(config: LychdConfig, loc: Locations): string[] {
  return resolveEngines(config).flatMap((e) => engineCacheDirs(e, loc));
}

/** "/root/.triton/cache" -> "root_.triton_cache": one folder name per cache path. */
function cacheSlug(path: string): string {
  return path.replace(/^\/+/, "").replaceAll("/", "_");
}

function gpuDevices(gpu: GpuSpec): string[] {
  switch (gpu.vendor) {
    case "nvidia":
      return gpu.devices.length === 0
        ? ["nvidia.com/gpu=all"]
        : gpu.devices.map((d) => `nvidia.com/gpu=${d}`);
    case "amd":
      return ["/dev/kfd", "/dev/dri"];
    case "cpu":
      return [];
  }
}

export function prometheusUnit(config: LychdConfig, loc: Locations): PrometheusUnit {
  return {
    fileName: "harvester.container",
    image: config.harvester.image ?? PROMETHEUS_IMAGE,
    configDir: `${loc.dataDir}/prometheus`,
    retention: config.harvester.retention,
    port: PROMETHEUS_PORT,
    wantedBy: loc.bootTarget,
  };
}

export function grafanaUnit(config: LychdConfig, loc: Locations): GrafanaUnit {
  return {
    fileName: "scribe.container",
    image: config.scribe.image ?? GRAFANA_IMAGE,
    datasourcesDir: `${loc.dataDir}/grafana/provisioning/datasources`,
    dashboardProvidersDir: `${loc.dataDir}/grafana/provisioning/dashboards`,
    dashboardsDir: `${loc.dataDir}/grafana/dashboards`,
    adminSecret: GRAFANA_ADMIN_SECRET,
    port: GRAFANA_PORT,
    wantedBy: loc.bootTarget,
  };
}
