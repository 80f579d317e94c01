/**
 * lychd's own entry point with a pause after every file it replaces, for the crash test:
 * `paused_writes_main.ts MS ARGS...` runs `lychd ARGS...` and, after each atomic write, prints
 * `lychd-test: wrote PATH` on stderr and waits MS ms. A kill aimed just after the Nth line lands
 * with exactly N files replaced, so the test can put its kills in the middle of an update instead
 * of hoping a random moment falls into a window of a few milliseconds.
 */
import { main } from "../../main.ts";
import { denoHost, type Host } from "../../lib/host.ts";

const [ms, ...args] = Deno.args;
const host: Host = {
  ...denoHost,
  async writeFileAtomic(path, data, mode) {
    await denoHost.writeFileAtomic(path, data, mode);
    denoHost.err(`lychd-test: wrote ${path}\n`);
    await denoHost.sleep(Number(ms));
  },
};
Deno.exitCode = await main(args, host);
