/**
 * The gate's control channel: how `lychd swap` and `lychd status` talk to the running gate. A
 * folder, the gate's runtime folder (/run/lychd, or $XDG_RUNTIME_DIR/lychd; mode 0700, created
 * by systemd's RuntimeDirectory=): a client drops a request file into in/, the gate answers in
 * out/, and gate.json says a gate runs. Only the user the gate runs as (root in system mode) can
 * enter the folder; nothing listens on a port. Why not a unix socket: Deno grants a unix socket
 * by its exact path only, and the user's runtime folder has the uid in it, while the binary's
 * permissions are fixed when it is built (docs/gate.md).
 *
 *   GET  /status            -> GateStatus
 *   POST /close {hold_ms}   -> hold new requests (a swap starts); in flight go on
 *   POST /open {engine, swap?}   -> send to the engine (held requests first); record the swap
 *   POST /recover {engine}  -> open to the engine once it serves (swap --no-wait)
 *   POST /refuse {message, swap?} -> 503 to every held request: no engine will serve them
 *   POST /stop {message}    -> nothing serves (lychd stop): 503 to every request, at once
 *   POST /cut               -> abort the requests still in flight (a drain that timed out)
 */
import type { Gate, GateCounts, SwapRecord } from "./proxy.ts";
import { CONTROL_READY, type Host } from "../host.ts";
import type { Locations } from "../paths.ts";

export interface GateStatus {
  open: boolean;
  /** The engine requests go to (null while closed or not known). */
  engine: string | null;
  /** Why nothing serves after `lychd stop` (null: not stopped); requests get a 503 at once. */
  stopped: string | null;
  counts: GateCounts;
  /** Held requests by the engine they wait for (on demand); "" = any. */
  heldFor: Record<string, number>;
  lastSwap: SwapRecord | null;
  /** Swaps since the gate started. */
  swaps: number;
  /** When the gate started (ms since the epoch). */
  since: number;
}

export function controlFolder(loc: Locations): string | null {
  return loc.runtimeDir;
}

const TIMEOUT_MS = 5000;

/**
 * What a swap asks of the gate: the control requests above, and how often to look at it. The
 * requests are written once here; a client says only how one is carried (`post`).
 */
export abstract class GateControl {
  /** How often a drain looks at the in-flight count (ms). */
  abstract readonly pollMs: number;
  /** The swap runs inside the gate: a gate that stops answering will not come back to it. */
  abstract readonly inProcess: boolean;
  abstract status(): Promise<GateStatus | null>;
  /** One POST control request; false if no gate took it. */
  protected abstract post(path: string, body: unknown): Promise<boolean>;

  close(holdMs: number): Promise<boolean> {
    return this.post("/close", { hold_ms: holdMs });
  }

  open(engine: string, swap?: SwapRecord): Promise<boolean> {
    return this.post("/open", { engine, swap });
  }

  /** Open to `engine` as soon as it serves (swap --no-wait). */
  recover(engine: string | null): Promise<boolean> {
    return this.post("/recover", { engine });
  }

  refuse(message: string, swap?: SwapRecord): Promise<boolean> {
    return this.post("/refuse", { message, swap });
  }

  /** Nothing serves from now on (lychd stop): every request gets a 503 with `message`. */
  stop(message: string): Promise<boolean> {
    return this.post("/stop", { message });
  }

  /** Abort the requests still in flight (the drain timed out; the old engine is stopped next). */
  cut(): Promise<boolean> {
    return this.post("/cut", {});
  }
}

/** The client side, as swap and status use it; every call says null / false if no gate runs. */
export class GateClient extends GateControl {
  /**
   * Each look is a file written and answered (10-20 ms). A drain looks this often: it sees its
   * end within ~70 ms (it was 250 ms: up to a quarter of a second of every warm swap's pause).
   */
  readonly pollMs = 50;
  readonly inProcess = false;
  constructor(private host: Host, readonly folder: string) {
    super();
  }

  async status(): Promise<GateStatus | null> {
    const r = await this.host.control(this.folder, "GET", "/status", undefined, TIMEOUT_MS);
    if ("error" in r || r.status !== 200) return null;
    try {
      return JSON.parse(r.body) as GateStatus;
    } catch {
      return null;
    }
  }

  protected async post(path: string, body: unknown): Promise<boolean> {
    const r = await this.host.control(this.folder, "POST", path, body, TIMEOUT_MS);
    return !("error" in r) && r.status === 200;
  }
}

/**
 * The same requests made inside the gate's own process (an on-demand swap): the same
 * `controlRequest`, without the folder's round trips, so a drain sees its end within 10 ms.
 * A gate told to stop (SIGTERM) answers as a gone one does: the swap stops waiting on it.
 */
export class LocalGate extends GateControl {
  readonly pollMs = 10;
  readonly inProcess = true;
  constructor(private gate: Gate, private upstream: Upstreams, private since: number) {
    super();
  }

  status(): Promise<GateStatus | null> {
    if (this.gate.isShuttingDown()) return Promise.resolve(null);
    return Promise.resolve(gateStatus(this.gate, this.since));
  }

  protected async post(path: string, body: unknown): Promise<boolean> {
    if (this.gate.isShuttingDown()) return false;
    const r = await controlRequest(
      this.gate,
      this.upstream,
      this.since,
      new Request(`http://lychd-gate${path}`, { method: "POST", body: JSON.stringify(body) }),
    );
    await r.body?.cancel();
    return r.status === 200;
  }
}

/**
 * Where each engine answers: the engine port, or the own port of an engine that sleeps
 * (docs/warm-swaps.md); null = an engine not known, on the engine port.
 */
export type Upstreams = (engine: string | null) => string;

/**
 * The server side: one control request against `gate`, whose engines answer at `upstream(name)`.
 * Pure over the gate (no I/O of its own), so it is tested without the folder.
 */
export async function controlRequest(
  gate: Gate,
  upstream: Upstreams,
  since: number,
  req: Request,
): Promise<Response> {
  const path = new URL(req.url).pathname;
  const json = (data: unknown, status = 200) =>
    new Response(JSON.stringify(data), {
      status,
      headers: { "content-type": "application/json" },
    });
  if (req.method === "GET" && path === "/status") return json(gateStatus(gate, since));
  if (req.method !== "POST") return json({ error: `no ${req.method} ${path}` }, 404);
  let body: Record<string, unknown>;
  try {
    body = await req.json();
  } catch {
    return json({ error: "expected a JSON body" }, 400);
  }
  const swap = body.swap as SwapRecord | undefined;
  switch (path) {
    case "/close": {
      const hold = Number(body.hold_ms);
      gate.close(Number.isFinite(hold) && hold > 0 ? hold : undefined, upstream(gate.engine()));
      return json(gateStatus(gate, since));
    }
    case "/open":
      if (typeof body.engine !== "string") return json({ error: "open needs an engine" }, 400);
      if (swap) gate.recordSwap(swap);
      gate.open(upstream(body.engine), body.engine);
      return json(gateStatus(gate, since));
    case "/recover":
      {
        const engine = typeof body.engine === "string" ? body.engine : null;
        gate.recover(upstream(engine), engine);
      }
      return json(gateStatus(gate, since));
    case "/stop":
      gate.stop(String(body.message ?? "no engine is active"));
      return json(gateStatus(gate, since));
    case "/cut":
      gate.cut();
      return json(gateStatus(gate, since));
    case "/refuse":
      if (swap) gate.recordSwap(swap);
      gate.refuseHeld(String(body.message ?? "no engine serves"));
      // Whatever comes up on the engine port later (a start by hand) is served.
      gate.recover(upstream(null), null);
      return json(gateStatus(gate, since));
    default:
      return json({ error: `no POST ${path}` }, 404);
  }
}

export function gateStatus(gate: Gate, since: number): GateStatus {
  const heldFor: Record<string, number> = {};
  for (const h of gate.heldFor()) heldFor[h.wants ?? ""] = (heldFor[h.wants ?? ""] ?? 0) + 1;
  return {
    open: gate.isOpen(),
    engine: gate.engine(),
    stopped: gate.stopped(),
    counts: gate.counts(),
    heldFor,
    lastSwap: gate.lastSwap(),
    swaps: gate.swapCount(),
    since,
  };
}

/**
 * The gate's side: answer every request file in `folder`/in with `answer`, every few ms, until
 * `stopped()`. The folder is made owner-only here too (when run by hand, not by systemd).
 */
export async function serveControl(
  host: Host,
  folder: string,
  answer: (req: Request) => Promise<Response>,
  stopped: () => boolean,
): Promise<void> {
  await host.mkdirp(`${folder}/in`, 0o700);
  await host.mkdirp(`${folder}/out`, 0o700);
  const enc = new TextEncoder();
  await host.writeFileAtomic(
    `${folder}/${CONTROL_READY}`,
    enc.encode(JSON.stringify({ since: Date.now() })),
    0o600,
  );
  let starved = false;
  while (!stopped()) {
    try {
      for (const name of await host.listDir(`${folder}/in`)) {
        if (!name.endsWith(".json") || name.startsWith(".")) continue;
        const file = `${folder}/in/${name}`;
        const bytes = await host.readFile(file);
        await host.remove(file);
        if (bytes === null) continue;
        let result: { status: number; body: string };
        try {
          const r = JSON.parse(new TextDecoder().decode(bytes));
          const res = await answer(
            new Request(`http://lychd-gate${r.path}`, {
              method: r.method,
              ...(r.method === "POST" ? { body: JSON.stringify(r.body ?? {}) } : {}),
            }),
          );
          result = { status: res.status, body: await res.text() };
        } catch (e) {
          result = { status: 400, body: JSON.stringify({ error: (e as Error).message }) };
        }
        await host.writeFileAtomic(
          `${folder}/out/${name}`,
          enc.encode(JSON.stringify(result)),
          0o600,
        );
      }
      starved = false;
    } catch (e) {
      // Out of file descriptors (a flood of connections) passes: wait it out, do not exit.
      if (!outOfDescriptors(e)) throw e;
      if (!starved) host.err(`lychd gate: the control folder waits: ${(e as Error).message}\n`);
      starved = true;
      await host.sleep(100);
    }
    await host.sleep(10);
  }
  await host.remove(`${folder}/${CONTROL_READY}`);
}

/** EMFILE or ENFILE: the process or the system ran out of file descriptors, for now. */
export function outOfDescriptors(e: unknown): boolean {
  return /\(os error 2[34]\)/.test((e as Error)?.message ?? "");
}
