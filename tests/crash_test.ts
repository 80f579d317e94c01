/**
 * A real `lychd init` process killed with SIGKILL at random moments while it rewrites every
 * file: after each kill, each file is the complete old or the complete new version, the
 * manifest accepts what is on disk, and the next `init` completes and reports correctly.
 * (tests/apply_test.ts adds deterministic fault injection at every single write.)
 */
import { sha256 } from "../lib/apply.ts";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { lychdArgs, sandbox, testEnv } from "./support/cli.ts";

const RUNS = Number(Deno.env.get("LYCHD_CRASH_RUNS") ?? 100);
const NEW = [
  "--model",
  "vllm=org/new-a",
  "--model",
  "sglang=org/new-b",
  "--model",
  "llama=org/new-c:Q4",
];

Deno.test(`crash: ${RUNS} SIGKILLs at random moments of init never leave a half-written file`, async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init"])).code, 0);
    const old = await sb.tree();
    assertEquals((await sb.run(["init", ...NEW])).code, 0);
    const updated = await sb.tree();
    const changed = Object.keys(updated).filter((p) => old[p] !== updated[p]);
    assert(changed.length >= 5, `only ${changed.length} files change`);
    const restore = async (tree: Record<string, string>) => {
      for (const p of Object.keys(await sb.tree())) {
        if (!(p in tree)) await Deno.remove(`${sb.home}/${p}`);
      }
      for (const [p, text] of Object.entries(tree)) {
        await Deno.writeTextFile(`${sb.home}/${p}`, text);
      }
    };

    // Calibrate: how long a full run of this init takes here; the writes come near its end.
    const spawnInit = () =>
      new Deno.Command(Deno.execPath(), {
        args: lychdArgs(["init", ...NEW]),
        clearEnv: true,
        env: testEnv(sb),
        stdout: "null",
        stderr: "null",
      }).spawn();
    const durations: number[] = [];
    for (let i = 0; i < 3; i++) {
      await restore(old);
      const t0 = performance.now();
      await spawnInit().status;
      durations.push(performance.now() - t0);
    }
    const full = durations.sort((a, b) => a - b)[1];

    let killedMidway = 0;
    let inconsistencies = 0;
    for (let i = 0; i < RUNS; i++) {
      await restore(old);
      const child = spawnInit();
      // Aim at the last third of the run, where the writes are.
      await new Promise((r) => setTimeout(r, full * (0.6 + Math.random() * 0.45)));
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await child.status;

      const disk = await sb.tree();
      const manifest = JSON.parse(disk[".local/share/lychd/manifest.json"] ?? '{"files":{}}')
        .files as Record<string, string[]>;
      const mixed = changed.some((p) => disk[p] === old[p]) &&
        changed.some((p) => disk[p] === updated[p]);
      if (mixed) killedMidway++;
      for (const p of new Set([...Object.keys(old), ...Object.keys(updated)])) {
        // The manifest may hold the intent (old and new hashes): it is checked by what it accepts.
        if (p.endsWith("lychd.lock") || p.endsWith("manifest.json")) continue;
        const now = disk[p];
        if (now !== old[p] && now !== updated[p]) {
          inconsistencies++;
          console.error(`run ${i}: ${p} is neither old nor new`);
        }
        const abs = `${sb.home}/${p}`;
        if (now !== undefined && abs in manifest && !manifest[abs].includes(await sha256(now))) {
          inconsistencies++;
          console.error(`run ${i}: manifest does not accept ${p}`);
        }
      }
      const next = await sb.run(["init", ...NEW]);
      if (next.code !== 0) {
        inconsistencies++;
        console.error(`run ${i}: the next init failed: ${next.stderr}`);
      }
      assertMatch(next.stdout, /\d+ created, \d+ updated, \d+ unchanged/);
      const final = await sb.tree();
      for (const p of Object.keys(updated)) {
        if (final[p] !== updated[p]) {
          inconsistencies++;
          console.error(`run ${i}: after the next init, ${p} is not the new version`);
        }
      }
      const litter = Object.keys(final).filter((p) => p.includes(".lychd-tmp-"));
      if (litter.length) {
        inconsistencies++;
        console.error(`run ${i}: temp files left: ${litter}`);
      }
    }
    console.log(
      `  ${RUNS} kills (full run ${
        full.toFixed(0)
      } ms); ${killedMidway} landed between the first and the last ` +
        `file write; inconsistencies: ${inconsistencies}`,
    );
    assertEquals(inconsistencies, 0);
  } finally {
    await sb.cleanup();
  }
});
