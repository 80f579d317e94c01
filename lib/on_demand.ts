/**
 * On demand (gate.on_demand): a request whose `model` names another configured engine's model
 * (or the engine's name) waits for that engine, and the gate swaps to it through the same
 * drain/hold path as `lychd swap`. Two clients alternating between two models must not thrash
 * the GPU: an engine that just became active stays at least `minResidencyMs` while requests for
 * it keep coming (one came within the last IDLE_MS, or one is in flight); requests for other
 * models are held meanwhile. docs/gate.md says how many swaps that allows.
 */
import { type Gate, REPLAYABLE_BYTES } from "./gate.ts";
import type { Engine } from "./units/model.ts";

/** An engine with no request for this long (and none in flight) may be swapped out at once. */
export const IDLE_MS = 2000;

export interface OnDemandOptions {
  minResidencyMs: number;
  /** Run a swap to `engine` (drain, stop, start, ready, open); true if it serves. */
  swap: (engine: string) => Promise<boolean>;
  log: (line: string) => void;
  now?: () => number;
}

export class OnDemand {
  #byModel = new Map<string, string[]>();
  #activeSince: number;
  #lastFor = new Map<string, number>();
  #swapping = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #now: () => number;
  /** Swaps started, for tests and the log. */
  swaps = 0;

  constructor(readonly gate: Gate, readonly engines: Engine[], readonly options: OnDemandOptions) {
    for (const e of engines) {
      for (const id of new Set([e.name, ...(e.model ? [e.model] : [])])) {
        this.#byModel.set(id, [...(this.#byModel.get(id) ?? []), e.name]);
      }
    }
    this.#now = options.now ?? Date.now;
    this.#activeSince = this.#now();
    // Decide when a request has started to wait, not before: only then is it in the queue.
    gate.onHold = () => this.schedule();
  }

  /**
   * The engine a model name stands for (a model id or an engine's name), or null. Two engines
   * may serve one model: then the active one, if it is one of them, else the first configured.
   */
  engineFor(model: string): string | null {
    const names = this.#byModel.get(model) ?? [];
    const current = this.gate.engine();
    return current !== null && names.includes(current) ? current : names[0] ?? null;
  }

  async handle(req: Request, completed?: Promise<void>): Promise<Response> {
    const url = new URL(req.url);
    if (req.method === "GET" && url.pathname === "/v1/models") return this.models();
    let wants: string | null = null;
    let forward = req;
    const length = Number(req.headers.get("content-length") ?? NaN);
    if (req.method === "POST" && req.body !== null && length <= REPLAYABLE_BYTES) {
      const body = await req.arrayBuffer();
      const model = modelOf(body);
      wants = model === null ? null : this.engineFor(model);
      forward = new Request(req.url, {
        method: req.method,
        headers: req.headers,
        body,
        signal: req.signal,
      });
    }
    const current = this.gate.engine();
    this.#lastFor.set(wants ?? current ?? "", this.#now());
    return await this.gate.handle(forward, completed, wants);
  }

  /** Swap to the engine the oldest held request wants, once the active one may be swapped out. */
  schedule(): void {
    if (this.#swapping) return;
    clearTimeout(this.#timer);
    const current = this.gate.engine();
    const waiting = this.gate.heldFor().filter((h) => h.wants !== null && h.wants !== current);
    if (waiting.length === 0) return;
    const target = waiting[0].wants!;
    const now = this.#now();
    const resident = now - this.#activeSince;
    const busy = current !== null &&
      (this.gate.counts().inFlight > 0 || now - (this.#lastFor.get(current) ?? 0) < IDLE_MS);
    if (busy && resident < this.options.minResidencyMs) {
      this.#timer = setTimeout(() => this.schedule(), this.options.minResidencyMs - resident);
      return;
    }
    this.#swapping = true;
    this.swaps++;
    this.options.log(
      `on demand: ${current ?? "no engine"} -> ${target} (${waiting.length} requests wait for it)`,
    );
    this.options.swap(target).then((ok) => ok, () => false).then((ok) => {
      this.#swapping = false;
      this.#activeSince = this.#now();
      if (!ok) {
        this.gate.refuseHeld(`the swap to ${target} failed; see \`lychd status\``, target);
      }
      this.schedule();
    });
  }

  /** Every configured model, with its engine and whether that engine serves now. */
  models(): Response {
    const active = this.gate.engine();
    const data = this.engines.map((e) => ({
      id: e.model ?? e.name,
      object: "model",
      created: 0,
      owned_by: "lychd",
      engine: e.name,
      loaded: e.name === active,
    }));
    return new Response(JSON.stringify({ object: "list", data }), {
      headers: { "content-type": "application/json" },
    });
  }
}

function modelOf(body: ArrayBuffer): string | null {
  try {
    const model = JSON.parse(new TextDecoder().decode(body))?.model;
    return typeof model === "string" ? model : null;
  } catch {
    return null;
  }
}
