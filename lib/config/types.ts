import type { GpuVendor, Network, SleepApi } from "../engines.ts";
export type { SleepApi };
import type { Override } from "./yaml.ts";

/** Which setup a command acts on, as the command line says it (lib/setup.ts resolves it). */
export interface ConfigOptions {
  system: boolean;
  /** --config FILE; null = the one recorded at init, else the default location for the mode. */
  configPath: string | null;
  /** Flags that change lychd.yaml's keys (init, render). */
  overrides: Override[];
}

/** A validated lychd.yaml merged with flags. Every field is checked and safe to render. */
export interface LychdConfig {
  /** Cartridges to install, in the order given. */
  engines: string[];
  /** The engine that starts at boot. */
  active: string;
  gpu: GpuSpec;
  /** Host folder for Hugging Face downloads, shared by every engine; null = default for the mode. */
  modelCache: string | null;
  /** Keep every engine off the network: it must find image and model on this host. */
  offline: boolean;
  /** Environment variable -> Podman secret name, for every engine (e.g. HF_TOKEN). */
  secrets: Record<string, string>;
  harvester: { image: string | null; scrapeInterval: string; retention: string };
  scribe: { image: string | null };
  gate: GateSettings;
  cartridges: Record<string, CartridgeSettings>;
}

export interface GpuSpec {
  vendor: GpuVendor;
  /** NVIDIA CDI device indexes; empty = all. */
  devices: string[];
}

export interface CartridgeSettings {
  image: string | null;
  model: string | null;
  args: string[];
  env: Record<string, string>;
  secrets: Record<string, string>;
  gpu: GpuSpec | null;
  startTimeoutSec: number;
  stopTimeoutSec: number;
  /** Only for custom engines (built-ins know their own). */
  port: number | null;
  healthPath: string | null;
  metricsPath: string | null;
  /** Send one short completion after the health check, before the swap is done. */
  warmup: boolean;
  /** Folders inside the container kept in lychd's compile cache folder for the engine. */
  caches: string[];
  /**
   * Warm swaps (docs/warm-swaps.md): a swap away from this engine puts it to sleep at this level
   * (1: weights to host RAM; 2: weights dropped) instead of stopping it; null = stop it.
   */
  sleep: SleepLevel | null;
  /** The sleep routes a custom engine speaks (built-ins know theirs). */
  sleepApi: SleepApi | null;
  /** `network:` in lychd.yaml; null = private. */
  network: Network | null;
}

export type SleepLevel = 1 | 2;

/** lychd's own server on 8081 (`lychd gate`, lychd-gate.service), in front of the engines. */
export interface GateSettings {
  /** false: today's layout, the active engine itself on 8081. */
  enabled: boolean;
  /** The loopback port every engine publishes on behind the gate. */
  enginePort: number;
  /** Where 8081 listens: loopback only, or every address (then API keys are required). */
  listen: "loopback" | "all";
  /** A file of API keys (one per line, mode 0600), required when listen is all. */
  apiKeysFile: string | null;
  /** How long a request waits for an engine; null = the engine's start timeout. */
  holdTimeoutSec: number | null;
  maxHeld: number;
  /** How long a swap waits for the old engine's requests in flight. */
  drainTimeoutSec: number;
  /** Swap to the engine whose model a request names. */
  onDemand: boolean;
  /** An engine that became active stays at least this long while requests for it keep coming. */
  minResidencySec: number;
  /** At most this many engines asleep at once (docs/warm-swaps.md); beyond, a swap stops. */
  maxAsleep: number;
}
