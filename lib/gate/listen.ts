/**
 * The gate's listening socket, kept open through accept errors. Deno.serve stops listening for
 * good when accept() fails (EMFILE: out of file descriptors, under a flood of connections): its
 * `finished` rejects and the process lives on, deaf, until someone restarts it. The gate listens
 * again instead: at once after a listener that served 10 s, else after a pause that grows from
 * 50 ms to 2 s while the error lasts; meanwhile new
 * clients are refused (which they can retry) and the requests already accepted go on.
 */

/** The longest pause between two attempts to listen again. */
export const RELISTEN_MAX_MS = 2000;
/** Listeners kept to be shut down with the gate: the live one and the last that stopped. */
const KEEP_SERVERS = 8;
/** A listener that served this long without an error starts the pauses from zero again. */
const RELISTEN_RESET_MS = 10_000;

export interface Listener {
  /** Stop listening (and stop listening again); resolves once the requests in flight ended. */
  shutdown(): Promise<void>;
  /** How often it listened again after an error. */
  relistens(): number;
}

export function keepListening(
  open: () => Deno.HttpServer,
  clock: {
    now: () => number;
    sleep: (ms: number) => Promise<void>;
    log: (line: string) => void;
  },
): Listener {
  let server = open();
  // Those that stopped listening may still be answering requests they accepted.
  const servers = [server];
  let openedAt = clock.now();
  let stopped = false;
  let relistens = 0;
  let pauseMs = 0;
  const loop = (async () => {
    while (true) {
      try {
        await server.finished;
        return; // shut down
      } catch (e) {
        if (stopped) return;
        pauseMs = clock.now() - openedAt >= RELISTEN_RESET_MS
          ? 0
          : Math.min(Math.max(pauseMs * 2, 50), RELISTEN_MAX_MS);
        clock.log(
          `lychd gate: stopped listening (${(e as Error).message}); listening again in ` +
            `${pauseMs} ms`,
        );
      }
      while (!stopped) {
        await clock.sleep(pauseMs);
        if (stopped) return;
        try {
          server = open();
          servers.push(server);
          // A gate flooded again and again keeps the newest few (their requests are long done).
          if (servers.length > KEEP_SERVERS) servers.shift();
          openedAt = clock.now();
          relistens++;
          break;
        } catch (e) {
          pauseMs = Math.min(Math.max(pauseMs * 2, 50), RELISTEN_MAX_MS);
          clock.log(
            `lychd gate: cannot listen yet (${(e as Error).message}); next try in ${pauseMs} ms`,
          );
        }
      }
    }
  })();
  return {
    async shutdown() {
      stopped = true;
      await Promise.all(servers.map((s) => s.shutdown().catch(() => {})));
      await loop;
    },
    relistens: () => relistens,
  };
}
