/**
 * A full disk and a read-only folder during `init` (as root: a tiny tmpfs, or a read-only bind
 * mount, in a private mount namespace made by unshare): a clear error, nothing half-written,
 * and the next init finishes once there is room.
 */
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { IN_CI } from "./support/tools.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

function notRoot(): boolean {
  const id = new Deno.Command("id", { args: ["-u"], stdout: "piped" }).outputSync();
  if (new TextDecoder().decode(id.stdout).trim() === "0") return false;
  if (IN_CI) throw new Error("disk fault tests need root in CI");
  console.error(
    "\n!!! SKIPPING disk fault tests: not root (they mount a tmpfs in a private namespace)\n",
  );
  return true;
}

/**
 * Run `lychd init` in a private mount namespace after `setup` (shell) prepared $HOME; then,
 * still inside, `lychd init --dry-run` and a count of temp files left, to look at the disk as
 * the failed init left it.
 */
async function initUnder(home: string, setup: string) {
  const bin = `${home}.bin`;
  await Deno.mkdir(bin, { recursive: true });
  for (const p of ["systemctl", "podman"]) {
    await Deno.writeTextFile(`${bin}/${p}`, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
  }
  const lychd = `"${Deno.execPath()}" run -q -P --frozen "${ROOT}main.ts"`;
  const script = `set -e; ${setup}; set +e; ${lychd} init; rc=$?; echo "=== dry-run" >&2; ` +
    `${lychd} init --dry-run 2>/dev/null | grep -E '^(create|update|unchanged|CONFLICT) ' >&2; ` +
    `echo "=== temps $(find "$HOME" -name '*.lychd-tmp-*' | wc -l)" >&2; exit $rc`;
  const r = await new Deno.Command("unshare", {
    args: ["-m", "sh", "-c", script],
    clearEnv: true,
    env: { HOME: home, PATH: `${bin}:/usr/bin:/bin`, DENO_DIR, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

async function files(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      if (e.isDirectory) await walk(`${d}/${e.name}`);
      else out[`${d}/${e.name}`.slice(dir.length + 1)] = (await Deno.stat(`${d}/${e.name}`)).size;
    }
  };
  await walk(dir);
  return out;
}

Deno.test({
  name:
    "disk faults: a full disk stops init with a clear error, nothing half-written; it finishes later",
  ignore: notRoot(),
  async fn() {
    const home = await Deno.makeTempDir({ prefix: "lychd-full-" });
    try {
      // 64 KiB: the units fit, the dashboards (about 20 KiB each) do not all fit.
      const r = await initUnder(home, `mount -t tmpfs -o size=64k tmpfs "$HOME"`);
      assertEquals(r.code, 1, r.stdout + r.stderr);
      assertMatch(r.stderr, /lychd: could not write \S+: No space left on device/);
      assertMatch(r.stderr, /nothing is half-written/);
      assert(!r.stderr.includes("    at "), "a stack trace instead of a message");
      // As the failed init left the disk: every file there is complete (unchanged), the rest
      // still to create; nothing to update (which a half-written file would be), no temp file.
      const after = r.stderr.slice(r.stderr.indexOf("=== dry-run"));
      assertMatch(after, /^unchanged /m);
      assertMatch(after, /^create /m);
      assert(!/^(update|CONFLICT) /m.test(after), after);
      assertMatch(after, /=== temps 0/);
      // The tmpfs vanished with its namespace; the same on the real disk finishes normally.
      const ok = await initUnder(home, "true");
      assertEquals(ok.code, 0, ok.stderr);
    } finally {
      await Deno.remove(home, { recursive: true });
      await Deno.remove(`${home}.bin`, { recursive: true });
    }
  },
});

Deno.test({
  name: "disk faults: a read-only unit folder stops init with a clear error; no file is touched",
  ignore: notRoot(),
  async fn() {
    const home = await Deno.makeTempDir({ prefix: "lychd-ro-" });
    try {
      const units = `${home}/.config/containers/systemd`;
      await Deno.mkdir(units, { recursive: true });
      const r = await initUnder(
        home,
        `mount --bind "${units}" "${units}" && mount -o remount,bind,ro "${units}"`,
      );
      assertEquals(r.code, 1, r.stdout + r.stderr);
      assertMatch(
        r.stderr,
        /lychd: could not write \S+systemd\/\S+\.container: Read-only file system/,
      );
      assertMatch(r.stderr, /\(0 of \d+ files written\)/);
      const left = Object.keys(await files(home));
      assert(
        left.every((p) => p.endsWith("manifest.json") || p.endsWith("lychd.lock")),
        left.join(", "),
      );
      assert(!left.some((p) => p.includes(".lychd-tmp-")));
    } finally {
      await Deno.remove(home, { recursive: true });
      await Deno.remove(`${home}.bin`, { recursive: true });
    }
  },
});
