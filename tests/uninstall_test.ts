/** uninstall on real files, and the shell completions. */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { EXIT } from "../lib/exit.ts";
import { sandbox } from "./support/cli.ts";

const UNITS = ".config/containers/systemd";
const DATA = ".local/share/lychd";

Deno.test("uninstall: removes what lychd wrote, keeps an edited unit and the data; --purge; twice is a no-op", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init"])).code, 0);
    const edited = `${UNITS}/soulstone-llama.container`;
    await Deno.writeTextFile(`${sb.home}/${edited}`, (await sb.read(edited)) + "# mine\n");

    const before = await sb.tree();
    const dry = await sb.run(["uninstall", "--dry-run"]);
    assertEquals(dry.code, 0, dry.stderr);
    assertMatch(dry.stdout, /would keep +\S+soulstone-llama\.container \(edited/);
    assertDeep(await sb.tree(), before, "the dry run changed files");

    const r = await sb.run(["uninstall"]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(
      r.stdout,
      /^kept +\S+soulstone-llama\.container \(edited since lychd wrote it; --force removes it\)$/m,
    );
    assertMatch(r.stdout, /kept Prometheus' and Grafana's data/);
    assertDeep(
      Object.keys(await sb.tree()).sort(),
      [
        `${DATA}/grafana-admin-password`,
        `${DATA}/lychd.lock`,
        `${DATA}/manifest.json`,
        ".config/lychd/lychd.yaml",
        edited,
      ].sort(),
    );
    const calls = await sb.calls();
    const stopCall = calls.find((c) => c.startsWith("systemctl --user stop ")) ?? "";
    assert(
      stopCall.includes("soulstone-vllm.service") && stopCall.includes("harvester.service"),
      calls.join("\n"),
    );
    assertEquals(calls.at(-1), "systemctl --user daemon-reload");

    const purge = await sb.run(["uninstall", "--purge", "--force"]);
    assertEquals(purge.code, 0, purge.stderr);
    assertMatch(purge.stdout, /removed +\S+soulstone-llama\.container/);
    assertMatch(purge.stdout, /^removed +Podman volume lychd-harvester-data$/m);
    assertMatch(purge.stdout, /^removed +Podman volume lychd-scribe-data$/m);
    assertMatch(purge.stdout, /^removed +\S+\/\.config\/lychd\/lychd\.yaml$/m);
    assertDeep(Object.keys(await sb.tree()), [`${DATA}/lychd.lock`]);
    assert((await sb.calls()).includes("podman volume rm --force lychd-harvester-data"));

    const again = await sb.run(["uninstall"]);
    assertEquals(again.code, 0);
    assertMatch(again.stdout, /Nothing to uninstall/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("uninstall --purge deletes lychd.yaml only if lychd wrote it, refuses another --config, reports podman failures", async () => {
  const sb = await sandbox();
  try {
    // A config the user wrote by hand, somewhere else: recorded at init, theirs to keep.
    const mine = `${sb.home}/srv/lychd.yaml`;
    await Deno.mkdir(`${sb.home}/srv`);
    await Deno.writeTextFile(mine, "engines: [llama]\ngpu: cpu\n");
    assertEquals((await sb.run(["init", "--config", mine])).code, 0);
    const other = `${sb.home}/other.yaml`;
    await Deno.writeTextFile(other, "engines: [vllm]\n");

    const wrong = await sb.run(["uninstall", "--purge", "--config", other]);
    assertEquals(wrong.code, EXIT.USAGE, wrong.stderr);
    assertMatch(wrong.stderr, new RegExp(`rendered from ${mine}, but --config names ${other}`));
    assertEquals(await sb.read(other), "engines: [vllm]\n");

    // podman cannot remove the volumes: said, and the exit code says it.
    await Deno.writeTextFile(
      `${sb.bin}/podman`,
      `#!/bin/sh\necho "podman $*" >> '${sb.bin}/calls.log'\n` +
        `case "$1 $2" in "volume rm") echo "volume is in use" >&2; exit 2 ;; esac\n`,
      { mode: 0o755 },
    );
    const purge = await sb.run(["uninstall", "--purge"]);
    assertEquals(purge.code, EXIT.FAILED, purge.stdout + purge.stderr);
    assertMatch(
      purge.stderr,
      /could not remove the Podman volume lychd-harvester-data: volume is in use/,
    );
    assertMatch(purge.stdout, /kept +\S+srv\/lychd\.yaml \(you wrote it, not lychd/);
    assertEquals(await sb.read(mine), "engines: [llama]\ngpu: cpu\n");
  } finally {
    await sb.cleanup();
  }
});

Deno.test("completions: bash completes commands, flags and engine names; zsh and fish scripts parse", async () => {
  const sb = await sandbox();
  try {
    const script = (await sb.run(["completions", "bash"])).stdout;
    const complete = async (...words: string[]) => {
      const r = await new Deno.Command("bash", {
        args: [
          "-c",
          `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${
            words.length - 1
          }; _lychd; echo "\${COMPREPLY[*]}"`,
        ],
        stdout: "piped",
      }).output();
      return new TextDecoder().decode(r.stdout).trim();
    };
    assertEquals(await complete("lychd", "sw"), "swap");
    assertEquals(await complete("lychd", "swap", "ll"), "llama");
    assertEquals(await complete("lychd", "init", "--dry"), "--dry-run");
    assertEquals(await complete("lychd", "logs", "har"), "harvester");
    const zsh = (await sb.run(["completions", "zsh"])).stdout;
    assertMatch(zsh, /^#compdef lychd/);
    const fish = (await sb.run(["completions", "fish"])).stdout;
    assertMatch(
      fish,
      /complete -c lychd -n '__fish_seen_subcommand_from swap' -a 'vllm sglang llama'/,
    );
    assertEquals((await sb.run(["completions", "tcsh"])).code, 2);
  } finally {
    await sb.cleanup();
  }
});
