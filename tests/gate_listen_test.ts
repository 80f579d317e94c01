/**
 * The gate keeps listening through accept errors. Deno.serve stops listening for good when
 * accept() fails with EMFILE (out of file descriptors: a flood of connections), and lychd's
 * control folder failed the same way and exited the gate. Here the real `lychd gate` runs with a
 * soft limit of 128 open files, in a network namespace of its own (`unshare --net`: its port 8081
 * is nobody else's while other tests run); connections are opened until it takes no more, then
 * closed, and the gate must answer again without a restart.
 */
import { assert, assertEquals } from "./support/assert.ts";
import { sandbox, testEnv } from "./support/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const canUnshare = new Deno.Command("unshare", { args: ["--net", "true"] }).outputSync().success;

Deno.test({
  name: "the gate out of file descriptors: it stops listening, listens again, and answers again",
  ignore: !canUnshare,
  async fn() {
    const sb = await sandbox();
    try {
      await Deno.mkdir(`${sb.home}/run`, { mode: 0o700 });
      const init = await sb.run(["init", "--engines", "llama", "--no-reload"], testEnv(sb));
      assertEquals(init.code, 0, init.stderr);
      const out = await new Deno.Command("unshare", {
        args: [
          "--net",
          "sh",
          "-c",
          'ip link set lo up && exec "$@"',
          "sh",
          Deno.execPath(),
          "run",
          "-q",
          "--allow-all",
          `${ROOT}tests/support/gate_flood_main.ts`,
          sb.home,
          "128",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
      const seen = JSON.parse(text.trim().split("\n").at(-1)!);
      const log = `gate log:\n${seen.log}`;
      assert(seen.answeredFirst, `the gate never answered: ${log}`);
      assert(!seen.exitedEarly, `the gate exited: ${log}`);
      assert(seen.answeredAgain, `the gate did not answer again after the flood: ${log}`);
      // It did run out (the flood reached its limit), and said so.
      assert(
        /stopped listening .*os error 24/.test(seen.log),
        `no "stopped listening" after ${seen.opened} connections (${seen.stoppedBy}): ${log}`,
      );
    } finally {
      await sb.cleanup();
    }
  },
});
