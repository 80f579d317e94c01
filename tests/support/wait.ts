/**
 * Waiting in tests: on the condition itself, never on the clock, with a deadline generous enough
 * for a shared, loaded CI machine. Running into a deadline is a failure, never a result.
 */

/** How long a test waits for something that takes milliseconds on an idle machine. */
export const DEADLINE_MS = 60_000;

/** Polls `cond` until it holds; throws, naming `what`, after `timeoutMs`. */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = DEADLINE_MS,
  everyMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not after ${timeoutMs / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `p`'s value, or a failure naming `what` after `timeoutMs`; the timer never outlives it. */
export async function within<T>(p: Promise<T>, what: string, timeoutMs = DEADLINE_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`not after ${timeoutMs / 1000} s: ${what}`)),
          timeoutMs,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
