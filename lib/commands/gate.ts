/**
 * `lychd gate`: lychd itself on 127.0.0.1:8081 (run by systemd as lychd-gate.service), in front
 * of whichever engine serves on the engine port. It holds requests while no engine is ready,
 * lets `lychd swap` drain and open it through its control folder, exports its own metrics on
 * /lychd/metrics, asks for API keys when it listens beyond loopback, and with on_demand swaps to
 * the engine whose model a request names (lib/gate/on_demand.ts). The proxy itself is lib/gate/proxy.ts.
 */
import { loadConfig } from "../config/load.ts";
import type { ConfigOptions, LychdConfig } from "../config/types.ts";
import { LychdError } from "../errors.ts";
import { EXIT } from "../exit.ts";
import { Gate, openAiError } from "../gate/proxy.ts";
import {
  controlFolder,
  controlRequest,
  LocalGate,
  serveControl,
  type Upstreams,
} from "../gate/control.ts";
import type { Host } from "../host.ts";
import { OnDemand } from "../gate/on_demand.ts";
import { keepListening } from "../gate/listen.ts";
import { engineUrl, isAsleep, probe, type ProbeState } from "../readiness.ts";
import { lockPath } from "../install.ts";
import { openSetup } from "../setup.ts";
import { showUnits } from "../systemctl.ts";
import {
  type Engine,
  GATE_METRICS_PATH,
  resolveEngines,
  soulstoneService,
} from "../units/model.ts";
import { STANDARD_PORT } from "../engines.ts";

export interface GateOptions {
  config: ConfigOptions;
}

/** Serve until SIGTERM or SIGINT; then let the requests in flight finish, and exit 0. */
export async function gate(host: Host, options: GateOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  const { config } = await loadConfig(host, setup.configPath, [], false);
  if (!config.gate.enabled) {
    throw new LychdError(
      `the gate is off in ${setup.configPath} (gate: false): the active engine itself holds ` +
        `port ${STANDARD_PORT}.`,
      EXIT.USAGE,
    );
  }
  const folder = controlFolder(setup.loc);
  if (folder === null) {
    throw new LychdError(
      "XDG_RUNTIME_DIR is not set: the gate's control folder lives there (run it as a user " +
        "service: systemctl --user start lychd-gate.service).",
      EXIT.NO_SYSTEMD,
    );
  }
  const engines = resolveEngines(config);
  const upstream = `http://127.0.0.1:${config.gate.enginePort}`;
  // An engine that sleeps answers on a port of its own (docs/warm-swaps.md).
  const upstreamOf: Upstreams = (name) => {
    const engine = engines.find((e) => e.name === name);
    return engine ? engineUrl(engine) : upstream;
  };
  const running = await activeEngine(host, setup.loc.systemctlScope, engines);
  const holdSec = config.gate.holdTimeoutSec ??
    engines.find((e) => e.name === (running ?? config.active))!.settings.startTimeoutSec;
  const gate = new Gate(upstream, {
    holdTimeoutMs: holdSec * 1000,
    maxHeld: config.gate.maxHeld,
    serving: async () => {
      // Whatever serves on the engine port now: ask systemd which one, then the engine itself.
      const name = await activeEngine(host, setup.loc.systemctlScope, engines);
      const engine = engines.find((e) => e.name === name);
      if (
        engine === undefined ||
        !serves((await probe(host, engine, 1000, setup.loc.systemctlScope)).state)
      ) return false;
      return { engine: engine.name, upstream: engineUrl(engine) };
    },
  });
  // Open only once the engine really serves (probed): a loading llama.cpp answers 503, which
  // no client should see. Not while a swap is under way: it opens the gate itself.
  openAfterSwaps(host, gate, {
    lockPath: lockPath(setup.loc),
    holdMs: holdSec * 1000,
    // As `lychd swap` holds: the slowest start, the slowest stop, and 30 s.
    swapHoldMs: (Math.max(...engines.map((e) => e.settings.startTimeoutSec)) +
      Math.max(...engines.map((e) => e.settings.stopTimeoutSec)) + 30) * 1000,
    upstream: upstreamOf,
    running: () => activeEngine(host, setup.loc.systemctlScope, engines),
  });
  let keys = await apiKeys(host, config);
  // A key added or revoked takes effect without a restart (which would cut requests in flight).
  Deno.addSignalListener("SIGHUP", () => {
    apiKeys(host, config).then((k) => {
      keys = k;
      host.err(`lychd gate: SIGHUP: ${k?.length ?? 0} API keys read\n`);
    }, (e) => host.err(`lychd gate: SIGHUP: keeping the old API keys: ${(e as Error).message}\n`));
  });
  const since = Date.now();
  const onDemand = config.gate.onDemand
    ? new OnDemand(gate, engines, {
      minResidencyMs: config.gate.minResidencySec * 1000,
      swap: (engine) =>
        swapInProcess(host, options.config, engine, new LocalGate(gate, upstreamOf, since)),
      log: (line) => host.err(`${line}\n`),
    })
    : null;

  let stopping = false;
  const control = serveControl(
    host,
    folder,
    (req) => controlRequest(gate, upstreamOf, since, req),
    () => stopping,
  ).catch((e) => {
    // Without its control folder no swap can drain it: exit, and let systemd say why.
    host.err(`lychd gate: the control folder ${folder} failed: ${(e as Error).message}\n`);
    Deno.exit(EXIT.FAILED);
  });
  const hostname = config.gate.listen === "all" ? "0.0.0.0" : "127.0.0.1";
  const front = keepListening(() =>
    Deno.serve({
      hostname,
      port: STANDARD_PORT,
      onListen: () => host.err(`lychd gate: ${hostname}:${STANDARD_PORT} -> ${upstream}\n`),
      // One line, not a stack trace: a client that cuts its upload off is an everyday event.
      onError: (e) => {
        host.err(`lychd gate: ${(e as Error)?.message ?? e}\n`);
        return openAiError(500, "lychd: the gate failed on this request");
      },
    }, (req, info) => {
      const remote = (info.remoteAddr as Deno.NetAddr).hostname;
      if (keys && !isLoopback(remote) && !authorized(req, keys)) {
        gate.countAnswer(401);
        return openAiError(401, "lychd: a valid API key is required (Authorization: Bearer KEY)");
      }
      if (new URL(req.url).pathname === GATE_METRICS_PATH) {
        return new Response(gate.metrics(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      const at = { completed: info.completed, client: remote };
      return onDemand ? onDemand.handle(req, at) : gate.handle(req, at);
    }), {
    now: () => host.now(),
    sleep: (ms) => host.sleep(ms),
    log: (line) => host.err(`${line}\n`),
  });

  const stop = new Promise<string>((resolve) => {
    for (const s of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(s, () => resolve(s));
  });
  const signal = await stop;
  host.err(
    `lychd gate: ${signal}: ${gate.counts().held} held requests answered 503 (restarting), ` +
      `letting ${gate.counts().inFlight} requests in flight finish\n`,
  );
  gate.shutdown();
  stopping = true;
  await Promise.all([front.shutdown(), control]);
  return EXIT.OK;
}

/** How often a gate started during a swap looks whether the swap has ended. */
const SWAP_POLL_MS = 250;

/**
 * Open a starting gate to the engine that serves, once no swap (or init) holds lychd's lock.
 * systemd may restart the gate while a swap drains the old engine: opened to it then, the gate
 * would send requests to an engine about to stop, to be refused and answered with a 503. It holds
 * them instead (up to `swapHoldMs`, a swap's longest), until the swap opens the gate as it does
 * the gate it closed, or, should the swap end without doing so, until the lock is free. Whatever
 * the gate is told meanwhile (a swap's open, `lychd stop`) stands.
 */
export async function openAfterSwaps(
  host: Pick<Host, "locked" | "sleep" | "err">,
  gate: Gate,
  at: {
    lockPath: string;
    holdMs: number;
    swapHoldMs: number;
    upstream: Upstreams;
    running: () => Promise<string | null>;
  },
): Promise<void> {
  gate.close(at.holdMs); // until it is known whether a swap is under way
  let mark = gate.changes();
  try {
    if (await host.locked(at.lockPath)) {
      host.err("lychd gate: a swap is under way: holding requests until it opens the gate\n");
      gate.close(at.swapHoldMs);
      mark = gate.changes();
      while (!gate.isShuttingDown() && await host.locked(at.lockPath)) {
        await host.sleep(SWAP_POLL_MS);
      }
    }
  } catch (e) {
    // Not knowing is no reason to hold forever: open as a gate without a swap would.
    host.err(`lychd gate: cannot tell whether a swap is under way: ${(e as Error).message}\n`);
  }
  const running = await at.running().catch(() => null);
  if (gate.changes() !== mark || gate.isShuttingDown()) return; // told what to do meanwhile
  gate.recover(at.upstream(running), running);
  // On demand waited while the gate was closed as if by a swap: the held requests may want a
  // swap of their own now.
  gate.onHold?.();
}

/**
 * Whether an engine in this state takes requests. "wrong-model" does: it serves the model its
 * running unit was started with, while lychd.yaml names another (init changed it; `lychd swap`
 * restarts it). Holding its clients until then would hold them for good.
 */
export function serves(state: ProbeState): boolean {
  return state === "ready" || state === "wrong-model";
}

/** The engine that runs and is awake (engines asleep run too: docs/warm-swaps.md). */
async function activeEngine(
  host: Host,
  scope: string[],
  engines: Engine[],
): Promise<string | null> {
  try {
    const names = engines.map((e) => e.name);
    const states = await showUnits(host, scope, names.map(soulstoneService), ["ActiveState"]);
    for (const e of engines) {
      if (states[soulstoneService(e.name)]?.ActiveState !== "active") continue;
      if (e.sleep && (await isAsleep(host, e, scope)) === true) continue;
      return e.name;
    }
    return null;
  } catch {
    return null;
  }
}

/** The keys file: one key per line, owner-only (a key readable by others is no secret). */
export async function apiKeys(host: Host, config: LychdConfig): Promise<string[] | null> {
  // validateConfig requires a file with listen: all; on loopback alone there may be none.
  const file = config.gate.apiKeysFile;
  if (file === null) return null;
  const mode = await host.fileMode(file);
  if (mode === null) throw new LychdError(`gate.api_keys_file ${file} does not exist`);
  if ((mode & 0o077) !== 0) {
    throw new LychdError(
      `gate.api_keys_file ${file} is readable by others (mode ${(mode & 0o777).toString(8)}): ` +
        `chmod 600 ${file}`,
    );
  }
  const text = new TextDecoder().decode((await host.readFile(file))!);
  const keys = [
    ...new Set(text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))),
  ];
  if (keys.length === 0) throw new LychdError(`gate.api_keys_file ${file} holds no key`);
  return keys;
}

export function authorized(req: Request, keys: string[]): boolean {
  const m = (req.headers.get("authorization") ?? "").match(/^Bearer\s+(\S+)$/i);
  if (m === null) return false;
  // Every key is compared in full, whatever matches: the time taken says nothing about a key.
  let found = false;
  for (const key of keys) found = sameSecret(m[1], key) || found;
  return found;
}

/** Constant-time for strings of one length (the length itself is no secret worth hiding). */
export function sameSecret(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i] ?? 0) ^ y[i];
  return diff === 0;
}

export function isLoopback(address: string): boolean {
  return address === "::1" || address.startsWith("127.") || address === "::ffff:127.0.0.1";
}

/**
 * On demand: the swap of `lychd swap ENGINE`, run inside the gate (it drains the gate), except
 * that the boot engine stays (SwapOptions.inGate).
 */
async function swapInProcess(
  host: Host,
  config: ConfigOptions,
  engine: string,
  inGate: LocalGate,
): Promise<boolean> {
  const { swap, swapDefaults } = await import("./swap.ts");
  try {
    // The gate's own SIGTERM handling stays in charge: a swap run here must not exit the process.
    const options = { ...swapDefaults(config, engine), ownSignals: false, inGate };
    return (await swap(host, options)) === EXIT.OK;
  } catch (e) {
    host.err(`lychd gate: on-demand swap to ${engine} failed: ${(e as Error).message}\n`);
    return false;
  }
}
