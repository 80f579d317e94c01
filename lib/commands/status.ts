/**
 * `lychd status [--json]`: every soulstone's unit state, which one serves and whether it is
 * healthy, the harvester and scribe with their URLs.
 *
 * Exit codes (lib/exit.ts): OK an engine is active and healthy; UNHEALTHY active but not (yet)
 * healthy; NOTHING_ACTIVE no engine is active; NO_SYSTEMD systemd cannot be reached. The JSON
 * shape is documented in README.md ("lychd status --json").
 */
import type { ConfigOptions } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import { GRAFANA_PORT, PROMETHEUS_PORT } from "../engines.ts";
import { EXIT } from "../exit.ts";
import type { Host } from "../host.ts";
import { openSetup } from "../setup.ts";
import { BASE_URL, isAsleep, probe } from "../readiness.ts";
import { showUnits } from "../systemctl.ts";
import { formatBytes, imageExists, imageSize, modelLocation } from "../images.ts";
import {
  compileCacheDir,
  engineCacheDirs,
  GATE_SERVICE,
  resolveEngines,
  soulstoneService,
} from "../units/model.ts";
import { controlFolder, GateClient } from "../gate/control.ts";
import type { SwapRecord } from "../gate/proxy.ts";
import type { Locations } from "../paths.ts";

export interface StatusOptions {
  config: ConfigOptions;
  json: boolean;
}

export interface StatusReport {
  version: 1;
  mode: "user" | "system";
  /** The soulstone whose unit is active, if any. */
  active: string | null;
  /** The soulstone that starts at boot. */
  boot: string;
  healthy: boolean;
  endpoint: string;
  engines: {
    name: string;
    unit: string;
    state: string;
    subState: string;
    /** The level it sleeps at, when it runs asleep (docs/warm-swaps.md); else null. */
    asleep: number | null;
    /**
     * Host memory charged to its unit now (systemd's MemoryCurrent: at sleep level 1 the weights
     * are in it, and so is the page cache of what it read); null when it does not run or systemd
     * does not count it.
     */
    memoryBytes: number | null;
    boot: boolean;
    image: string;
    /** Whether the image is on this host (null: Podman did not answer), and its size in bytes. */
    imagePresent: boolean | null;
    imageBytes: number | null;
    model: string | null;
    /** Whether the model is in the cache (null: unknown, e.g. llama.cpp's own -hf cache). */
    modelPresent: boolean | null;
    modelBytes: number | null;
    /** Why modelPresent is null, when lychd could not look: "outside lychd's read permission". */
    modelUnknown: string | null;
    /** The engine's compile and JIT caches on this host (null: it has none), bytes (null: unknown). */
    compileCache: { path: string; bytes: number | null } | null;
  }[];
  serving: { engine: string; health: string; models: string[] } | null;
  /**
   * The gate (lychd-gate.service), null when lychd.yaml has `gate: false`. `running`: its
   * control folder answered; then the counts, the engine it sends to and the last swap.
   */
  gate: {
    unit: string;
    state: string;
    running: boolean;
    open: boolean;
    engine: string | null;
    /** After `lychd stop`: why nothing serves (requests get a 503 at once); null otherwise. */
    stopped: string | null;
    held: number;
    inFlight: number;
    served: number;
    refused: number;
    /** Swaps through the gate since it started. */
    swaps: number;
    lastSwap: SwapRecord | null;
  } | null;
  /** `healthy`: the watcher's own health endpoint answered 200 (Prometheus /-/ready, Grafana /api/health). */
  watchers: { name: string; unit: string; state: string; url: string; healthy: boolean }[];
}

export async function status(host: Host, options: StatusOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  const loc = setup.loc;
  const { config } = await loadConfig(host, setup.configPath, [], false);
  const engines = resolveEngines(config);
  const watchers = [
    {
      name: "harvester",
      unit: "harvester.service",
      url: `http://127.0.0.1:${PROMETHEUS_PORT}`,
      health: "/-/ready",
    },
    {
      name: "scribe",
      unit: "scribe.service",
      url: `http://127.0.0.1:${GRAFANA_PORT}`,
      health: "/api/health",
    },
  ];
  const units = [
    ...engines.map((e) => soulstoneService(e.name)),
    ...watchers.map((w) => w.unit),
    ...(config.gate.enabled ? [GATE_SERVICE] : []),
  ];
  const props = await showUnits(host, loc.systemctlScope, units, [
    "ActiveState",
    "SubState",
    "MemoryCurrent",
  ]);
  const state = (unit: string) => props[unit]?.ActiveState ?? "unknown";
  const running = engines.filter((e) =>
    ["active", "activating"].includes(state(soulstoneService(e.name)))
  );
  // Engines asleep run too: the active one is the one awake.
  const asleep = new Map<string, number>();
  for (const e of running) {
    if (e.sleep && (await isAsleep(host, e, loc.systemctlScope)) === true) {
      asleep.set(e.name, e.sleep.level);
    }
  }
  const active = running.find((e) => !asleep.has(e.name)) ?? null;
  const p = active ? await probe(host, active, 2000, loc.systemctlScope) : null;
  const report: StatusReport = {
    version: 1,
    mode: loc.mode,
    active: active?.name ?? null,
    boot: config.active,
    healthy: p?.state === "ready",
    endpoint: BASE_URL,
    engines: await Promise.all(engines.map(async (e) => {
      const imageBytes = await imageSize(host, e.image);
      const present = imageBytes !== null ? true : await imageExists(host, e.image);
      const where = e.model
        ? modelLocation(
          config.modelCache ?? loc.modelCache,
          e.model,
          e.cartridge?.download(e.model) != null,
        )
        : null;
      // A model lychd may not read is unknown, never reported MISSING: that would be a guess.
      let modelBytes: number | null = null;
      let modelUnknown: string | null = where ? null : "kept in the engine's own cache";
      if (where) {
        try {
          modelBytes = await host.diskUsage(where);
        } catch (err) {
          modelUnknown = err instanceof Deno.errors.NotCapable
            ? "outside lychd's read permission"
            : err instanceof Deno.errors.PermissionDenied
            ? "not readable by this user"
            : `could not look: ${(err as Error).message}`;
        }
      }
      const cacheDir = engineCacheDirs(e, loc).length > 0 ? compileCacheDir(loc, e.name) : null;
      const cacheBytes = cacheDir === null
        ? null
        : await host.diskUsage(cacheDir).then((b) => b ?? 0, () => null);
      return {
        name: e.name,
        unit: soulstoneService(e.name),
        state: state(soulstoneService(e.name)),
        subState: props[soulstoneService(e.name)]?.SubState ?? "unknown",
        asleep: asleep.get(e.name) ?? null,
        memoryBytes: running.includes(e) ? memoryCurrent(props[soulstoneService(e.name)]) : null,
        boot: e.name === config.active,
        image: e.image,
        imagePresent: present,
        imageBytes,
        model: e.model,
        modelPresent: where && modelUnknown === null ? modelBytes !== null : null,
        modelBytes,
        modelUnknown: e.model ? modelUnknown : null,
        compileCache: cacheDir === null ? null : { path: cacheDir, bytes: cacheBytes },
      };
    })),
    serving: active && p ? { engine: active.name, health: p.detail, models: p.models } : null,
    gate: config.gate.enabled ? await gateReport(host, loc, state(GATE_SERVICE)) : null,
    watchers: await Promise.all(watchers.map(async ({ health, ...w }) => {
      const r = await host.httpGet(`${w.url}${health}`, 2000);
      return { ...w, state: state(w.unit), healthy: "status" in r && r.status === 200 };
    })),
  };
  host.out(options.json ? JSON.stringify(report, null, 2) + "\n" : describe(report));
  return !active ? EXIT.NOTHING_ACTIVE : report.healthy ? EXIT.OK : EXIT.UNHEALTHY;
}

async function gateReport(
  host: Host,
  loc: Locations,
  unitState: string,
): Promise<StatusReport["gate"]> {
  const folder = controlFolder(loc);
  const g = folder === null ? null : await new GateClient(host, folder).status();
  return {
    unit: GATE_SERVICE,
    state: unitState,
    running: g !== null,
    open: g?.open ?? false,
    engine: g?.engine ?? null,
    stopped: g?.stopped ?? null,
    held: g?.counts.held ?? 0,
    inFlight: g?.counts.inFlight ?? 0,
    served: g?.counts.served ?? 0,
    refused: g?.counts.refused ?? 0,
    swaps: g?.swaps ?? 0,
    lastSwap: g?.lastSwap ?? null,
  };
}

/** "vllm -> llama ok in 4.2 s (drain 0.3 s, stop 1.2 s, ...)" */
export function describeSwap(s: SwapRecord): string {
  const phases = Object.entries(s.phases).map(([k, v]) => `${k} ${v.toFixed(1)} s`);
  const total = Object.values(s.phases).reduce((a, b) => a + b, 0);
  return `${s.from ?? "nothing"} -> ${s.to} ${s.result} in ${total.toFixed(1)} s` +
    (phases.length ? ` (${phases.join(", ")})` : "") + `, at ${new Date(s.at).toISOString()}`;
}

function describe(r: StatusReport): string {
  const lines = [`lychd (${r.mode} mode): ${r.endpoint}`];
  if (r.serving) {
    lines.push(
      `  serving: ${r.serving.engine}, ${
        r.healthy ? "healthy" : "NOT healthy"
      }: ${r.serving.health}` +
        (r.serving.models.length ? ` [models: ${r.serving.models.join(", ")}]` : ""),
    );
  } else lines.push("  serving: nothing (no soulstone is active)");
  lines.push("  soulstones:");
  const have = (present: boolean | null, bytes: number | null, why: string | null = null) =>
    present === null
      ? (why ? `unknown (${why})` : "unknown")
      : present
      ? (bytes !== null ? formatBytes(bytes) : "present")
      : "MISSING";
  for (const e of r.engines) {
    lines.push(
      `    ${e.name.padEnd(10)} ${
        `${e.state} (${e.asleep === null ? e.subState : `asleep, level ${e.asleep}`})`.padEnd(22)
      } ${e.boot ? "starts at boot" : ""}`,
      ...(e.memoryBytes === null
        ? []
        : [`      memory ${formatBytes(e.memoryBytes)} (its unit's, page cache included)`]),
      `      image ${e.image} [${have(e.imagePresent, e.imageBytes)}]`,
      `      model ${e.model ?? "-"} [${
        e.model ? have(e.modelPresent, e.modelBytes, e.modelUnknown) : "-"
      }]`,
      ...(e.compileCache
        ? [
          `      compile cache ${e.compileCache.path} [${
            e.compileCache.bytes === null ? "unknown" : formatBytes(e.compileCache.bytes)
          }]`,
        ]
        : []),
    );
  }
  if (r.gate) {
    const g = r.gate;
    lines.push(
      g.running
        ? `  gate: ${g.unit} ${g.state}, ${
          g.open
            ? `open to ${g.engine ?? "the engine port"}`
            : g.stopped !== null
            ? `answering 503 at once (${g.stopped})`
            : "holding requests"
        }: ${g.held} held, ${g.inFlight} in flight, ${g.served} served, ${g.refused} refused`
        : `  gate: ${g.unit} ${g.state}, NOT answering: nothing serves ${r.endpoint}`,
    );
    if (g.lastSwap) lines.push(`    last swap: ${describeSwap(g.lastSwap)}`);
  }
  lines.push("  watchers:");
  for (const w of r.watchers) {
    lines.push(
      `    ${w.name.padEnd(10)} ${w.state.padEnd(22)} ${w.url}${
        w.healthy ? "" : " (not answering)"
      }`,
    );
  }
  return lines.join("\n") + "\n";
}

/** systemd's MemoryCurrent in bytes; null for "[not set]" or its "infinity" (2^64 - 1). */
function memoryCurrent(props: Record<string, string> | undefined): number | null {
  const v = props?.MemoryCurrent ?? "";
  return /^\d+$/.test(v) && v !== "18446744073709551615" ? Number(v) : null;
}
