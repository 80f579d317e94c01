/**
 * Every command acts on the configuration the installed units came from (the real CLI, real
 * files, fake systemctl/podman): init records lychd.yaml's path, later commands use it without
 * --config, refuse another one, and never re-render from the defaults.
 */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { sandbox } from "./support/cli.ts";
import { EXIT } from "../lib/exit.ts";

const UNITS = ".config/containers/systemd";
const DEFAULT_CONFIG = ".config/lychd/lychd.yaml";

/** The tree without lychd's lock file, which any locking command may create. */
async function files(sb: Awaited<ReturnType<typeof sandbox>>) {
  const t = await sb.tree();
  delete t[".local/share/lychd/lychd.lock"];
  return t;
}

Deno.test("the config given at init is the one every later command uses; another is refused", async () => {
  const sb = await sandbox();
  try {
    const config = `${sb.home}/srv/lychd.yaml`;
    const yaml =
      "engines: [llama]\ngpu: cpu\ncartridges:\n  llama:\n    model: /models/tiny.gguf\n";
    await Deno.mkdir(`${sb.home}/srv`);
    await Deno.writeTextFile(config, yaml);
    const init = await sb.run(["init", "--config", config]);
    assertEquals(init.code, EXIT.OK, init.stderr);
    // Hints carry the flags that reach this setup.
    assertMatch(
      init.stdout,
      new RegExp(`Next: lychd pull --config ${config}, then lychd swap --config ${config} llama`),
    );
    const manifest = JSON.parse(await sb.read(".local/share/lychd/manifest.json"));
    assertDeep(manifest.config, { path: config, writtenByLychd: false });
    const installed = await files(sb);

    // swap, stop, pull, status without --config: the recorded file, not the defaults.
    const swap = await sb.run(["swap", "llama", "--no-wait"]);
    assertEquals(swap.code, EXIT.OK, swap.stdout + swap.stderr);
    const stop = await sb.run(["stop"]);
    assertEquals(stop.code, EXIT.OK, stop.stderr);
    assertMatch(stop.stdout, /^Stopped the engine: soulstone-llama\.service$/m);
    const pull = await sb.run(["pull"]);
    assertEquals(pull.code, EXIT.OK, pull.stderr);
    assert(!pull.stdout.includes("vllm"), pull.stdout);
    const status = await sb.run(["status", "--json"]);
    assertDeep(JSON.parse(status.stdout).engines.map((e: { name: string }) => e.name), ["llama"]);
    assertDeep(await files(sb), installed, "a command re-rendered or wrote files");
    assert(!(DEFAULT_CONFIG in installed), "a default lychd.yaml was written");
    assert(!(`${UNITS}/soulstone-vllm.container` in installed));

    // Another config is refused, naming both paths; nothing changes.
    const other = `${sb.home}/other.yaml`;
    await Deno.writeTextFile(other, "engines: [vllm]\n");
    for (const args of [["swap", "vllm"], ["status"], ["stop"], ["pull"], ["init"]]) {
      const r = await sb.run([...args, "--config", other]);
      assertEquals(r.code, EXIT.USAGE, `${args}: ${r.stdout}${r.stderr}`);
      assertMatch(r.stderr, new RegExp(`rendered from ${config}, but --config names ${other}`));
    }
    assertDeep(await files(sb), { ...installed, "other.yaml": "engines: [vllm]\n" });

    // init --force adopts the other file.
    const adopt = await sb.run(["init", "--config", other, "--force"]);
    assertEquals(adopt.code, EXIT.OK, adopt.stderr);
    assert((await sb.tree())[`${UNITS}/soulstone-vllm.container`] !== undefined);
    assertEquals(
      JSON.parse(await sb.read(".local/share/lychd/manifest.json")).config.path,
      other,
    );
  } finally {
    await sb.cleanup();
  }
});

Deno.test("the recorded config gone: commands refuse instead of rendering the defaults", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init", "--engines", "llama"])).code, EXIT.OK);
    await Deno.remove(`${sb.home}/${DEFAULT_CONFIG}`);
    const before = await files(sb);
    for (const args of [["swap", "llama", "--no-wait"], ["status"], ["init"]]) {
      const r = await sb.run(args);
      assertEquals(r.code, EXIT.FAILED, `${args}: ${r.stdout}${r.stderr}`);
      assertMatch(
        r.stderr,
        /lychd\.yaml does not exist, but lychd's units here were rendered from it/,
      );
    }
    assertDeep(await files(sb), before);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("not set up: commands say so (and point at a setup in the other mode)", async () => {
  const sb = await sandbox();
  try {
    for (const args of [["swap", "llama"], ["status"], ["stop"], ["pull"], ["logs"]]) {
      const r = await sb.run(args);
      assertEquals(r.code, EXIT.FAILED, `${args}: ${r.stdout}${r.stderr}`);
      assertMatch(r.stderr, /lychd is not set up in user mode here .*run `lychd init` first/);
    }
    assertDeep(await files(sb), {});
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init keeps a hand-written lychd.yaml byte for byte, and its mode", async () => {
  const sb = await sandbox();
  try {
    const text = "# mine\nengines:   [llama, vllm]   # spacing kept\ngpu: cpu\nactive: llama\n";
    await Deno.mkdir(`${sb.home}/.config/lychd`, { recursive: true });
    await Deno.writeTextFile(`${sb.home}/${DEFAULT_CONFIG}`, text, { mode: 0o644 });
    await Deno.chmod(`${sb.home}/${DEFAULT_CONFIG}`, 0o644);
    for (
      const args of [["init"], ["init", "--engines", "llama,vllm"], ["init", "--active", "llama"]]
    ) {
      const r = await sb.run(args);
      assertEquals(r.code, EXIT.OK, r.stderr);
      assertEquals(await sb.read(DEFAULT_CONFIG), text, `${args} rewrote lychd.yaml`);
      assertEquals((await Deno.stat(`${sb.home}/${DEFAULT_CONFIG}`)).mode! & 0o777, 0o644);
    }
    // A flag that changes a value changes that value, and the mode stays the user's.
    const r = await sb.run(["init", "--active", "vllm"]);
    assertEquals(r.code, EXIT.OK, r.stderr);
    assertMatch(await sb.read(DEFAULT_CONFIG), /^active: vllm$/m);
    assertMatch(await sb.read(DEFAULT_CONFIG), /^# mine$/m);
    assertEquals((await Deno.stat(`${sb.home}/${DEFAULT_CONFIG}`)).mode! & 0o777, 0o644);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("a closed pipe ends lychd quietly: init --dry-run | head -3", async () => {
  const sb = await sandbox();
  try {
    const deno = Deno.execPath();
    const root = new URL("..", import.meta.url).pathname;
    const r = await new Deno.Command("bash", {
      args: [
        "-c",
        `set -o pipefail; "${deno}" run -q -P --frozen "${root}main.ts" init --dry-run 2>"${sb.home}/err" | head -3; echo "exit=$?"`,
      ],
      env: { HOME: sb.home, PATH: `${sb.bin}:/usr/bin:/bin`, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout);
    assertMatch(out, /exit=0\n$/);
    assertEquals(out.split("\n").length, 5, out); // 3 lines, exit=0, and the final newline
    assertEquals(await Deno.readTextFile(`${sb.home}/err`), "", "something was printed on stderr");
  } finally {
    await sb.cleanup();
  }
});
