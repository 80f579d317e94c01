/**
 * Every exit code lychd uses, one outcome each, so that scripts can tell "rolled back" from
 * "nothing happened". README.md ("Exit codes") shows this table; tests import these constants.
 */
export const EXIT = {
  /** Done: what was asked for is true now. */
  OK: 0,
  /** Failed before changing anything on this host (image missing, unit missing, lock timeout). */
  FAILED: 1,
  /** Bad command line or lychd.yaml; nothing was changed. */
  USAGE: 2,
  /** init: the files are written, but systemd could not be reloaded. */
  NOT_RELOADED: 3,
  /** swap: the swap failed and nothing serves on 8081 now. */
  NOT_SERVING: 4,
  /** swap: the swap failed; the engine that served before serves again. */
  ROLLED_BACK: 5,
  /** status: an engine is active but not (yet) healthy. */
  UNHEALTHY: 6,
  /** status: no engine is active. */
  NOTHING_ACTIVE: 7,
  /** systemd (the user's or the system's manager) cannot be reached. */
  NO_SYSTEMD: 8,
  /** Interrupted by SIGINT (Ctrl-C) / SIGTERM: 128 + the signal's number, as shells do. */
  INTERRUPTED: 130,
  TERMINATED: 143,
} as const;

/** The table as README.md prints it: code, name, meaning. */
export const EXIT_TABLE: readonly [number, string, string][] = [
  [EXIT.OK, "OK", "done: what was asked for is true now"],
  [
    EXIT.FAILED,
    "FAILED",
    "failed before changing anything (image or unit missing, lock timeout, not set up)",
  ],
  [EXIT.USAGE, "USAGE", "bad command line or lychd.yaml; nothing was changed"],
  [EXIT.NOT_RELOADED, "NOT_RELOADED", "init: files written, but systemd could not be reloaded"],
  [EXIT.NOT_SERVING, "NOT_SERVING", "swap failed and nothing serves on 8081 now"],
  [EXIT.ROLLED_BACK, "ROLLED_BACK", "swap failed; the engine that served before serves again"],
  [EXIT.UNHEALTHY, "UNHEALTHY", "status: an engine is active but not (yet) healthy"],
  [EXIT.NOTHING_ACTIVE, "NOTHING_ACTIVE", "status: no engine is active"],
  [EXIT.NO_SYSTEMD, "NO_SYSTEMD", "systemd (user or system manager) cannot be reached"],
  [EXIT.INTERRUPTED, "INTERRUPTED", "stopped by Ctrl-C (SIGINT)"],
  [EXIT.TERMINATED, "TERMINATED", "stopped by SIGTERM"],
];
