/**
 * What a client of the gate sees when something goes wrong: one row per case, the promise that
 * docs/gate.md ("What a client sees") shows and tests/gate_faults_test.ts checks, row by row
 * (`outcome(id)` there asserts an answer against its row). docs_test below keeps the doc's table
 * the same as this one.
 */
export interface Outcome {
  id: string;
  /** When it happens. */
  when: string;
  /** The HTTP status the client gets, or "held": it waits, then gets the engine's answer. */
  status: number | "held";
  /** What the error's message says (OpenAI-shaped: {"error": {"message", "type", "code"}}). */
  says: string;
  /** The message, as a test matches it. */
  match: RegExp | null;
  /** Whether it carries Retry-After. */
  retryAfter: boolean;
}

export const OUTCOMES: Outcome[] = [
  {
    id: "held",
    when: "no engine serves yet: a swap, an engine that crashed and is restarted, one that " +
      "still loads (its 503), a refused connection",
    status: "held",
    says: "nothing until an engine serves; then that engine's answer (a request that was " +
      "refused is sent once more, to the same engine only)",
    match: null,
    retryAfter: false,
  },
  {
    id: "hold_timeout",
    when: "held longer than `hold_timeout`",
    status: 503,
    says: "no engine was ready within N s",
    match: /no engine was ready within [0-9.]+ s/,
    retryAfter: true,
  },
  {
    id: "queue_full",
    when: "`max_held` requests already wait",
    status: 503,
    says: "N requests are already waiting for the engine to be ready",
    match: /[0-9]+ requests are already waiting for the engine to be ready/,
    retryAfter: true,
  },
  {
    id: "cut_by_swap",
    when: "still in flight when a swap's drain timeout ends",
    status: 502,
    says: "the engine went away mid-request: ENGINE was stopped by a swap after the drain " +
      "timeout; ... not sent again",
    match: /the engine went away mid-request: .* stopped by a swap after the drain timeout/,
    retryAfter: false,
  },
  {
    id: "engine_lost",
    when: "the engine dropped the connection after it had the request (a crash, a kill); " +
      "the requests after it are held until the engine is probed serving",
    status: 502,
    says: "the engine went away mid-request (...); it may have run part of it, so lychd did " +
      "not send it again",
    match: /the engine went away mid-request \(.*\); it may have run part of it/,
    retryAfter: false,
  },
  {
    id: "refused_twice",
    when: "refused by the engine, held, and refused again when sent once more",
    status: 503,
    says: "the engine ENGINE refused the connection; your request was not run",
    match: /refused the connection; your request was not run/,
    retryAfter: true,
  },
  {
    id: "swapped_out",
    when: "refused by its engine, which a swap replaced before it served again (not on demand)",
    status: 503,
    says: "ENGINE no longer serves (...); your request never reached it and was not run: send " +
      "it again",
    match: /no longer serves .*; your request never reached it and was not run/,
    retryAfter: true,
  },
  {
    id: "stopped",
    when: "after `lychd stop` (no engine active, none starting)",
    status: 503,
    says: "no engine is active (stopped by `lychd stop`): start one with `lychd swap ENGINE`",
    match: /no engine is active/,
    retryAfter: false,
  },
  {
    id: "restarting",
    when: "held, or arriving, while the gate itself stops (a restart, an upgrade)",
    status: 503,
    says: "the gate is restarting",
    match: /the gate is restarting/,
    retryAfter: true,
  },
  {
    id: "swap_failed",
    when: "held for an engine whose swap failed (and was rolled back, or nothing serves)",
    status: 503,
    says: "the swap to ENGINE failed ...",
    match: /the swap to [a-z0-9_-]+ failed/,
    retryAfter: true,
  },
  {
    id: "backoff",
    when: "on demand: naming a model whose engine failed to start a short while ago",
    status: 503,
    says: "the swap to ENGINE failed N times; lychd tries it again in N s",
    match: /the swap to [a-z0-9_-]+ failed .*; lychd tries it again in [0-9]+ s/,
    retryAfter: true,
  },
  {
    id: "no_model",
    when: "on demand: a JSON body whose top-level `model` cannot be read (malformed, not a " +
      "string, named twice, or not within its first 32 MiB)",
    status: 400,
    says: "cannot tell which model to serve: WHY",
    match: /cannot tell which model to serve: /,
    retryAfter: false,
  },
  {
    id: "buffer_full",
    when: "on demand: request bodies read for their model already fill the gate's 256 MiB",
    status: 503,
    says: "the gate holds too many request bodies",
    match: /the gate holds too many request bodies/,
    retryAfter: true,
  },
  {
    id: "upgrade",
    when: "a WebSocket (or any protocol upgrade) request",
    status: 501,
    says: "the gate does not forward protocol upgrades",
    match: /the gate does not forward protocol upgrades/,
    retryAfter: false,
  },
];

export function outcome(id: string): Outcome {
  const o = OUTCOMES.find((o) => o.id === id);
  if (!o) throw new Error(`no outcome ${id} in tests/gate_outcomes.ts`);
  return o;
}

/** The table as docs/gate.md shows it. */
export function outcomesTable(): string {
  const rows = OUTCOMES.map((o) =>
    `| ${o.when} | ${o.status === "held" ? "held" : o.status}${
      o.retryAfter ? " + Retry-After" : ""
    } | ${o.says} |`
  );
  return ["| when | status | the message says |", "| --- | --- | --- |", ...rows].join("\n");
}
