/**
 * A real `lychd init` process killed with SIGKILL at random moments while it rewrites every
 * file: after each kill, each file is the complete old or the complete new version, the
 * manifest accepts what is on disk, and the next `init` completes and reports correctly.
 * (tests/apply_test.ts adds deterministic fault injection at every single write.)
 */
import { sha256 } from "../lib/apply.ts";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { lychdArgs, pausedLychdArgs, sandbox, testEnv } from "./support/cli.ts";

const RUNS = Number(Deno.env.get("LYCHD_CRASH_RUNS") ?? 100);
const PAUSE_MS = 25;
const NEW = [
  "--model",
  "vllm=org/new-a",
  "--model",
  "sglang=org/new-b",
  "--model",
  "llama=org/new-c:Q4",
];

Deno.test(`crash: ${RUNS} SIGKILLs during init, most aimed between two writes, never leave a half-written file`, async () => {
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

    // Most kills are aimed (see tests/support/paused_writes_main.ts): the child pauses after each
    // file it replaces, and is killed just after a chosen write, so the kill lands mid-update.
    // Every fourth kill comes at a random moment of an unpaused run, to cover kills inside a
    // write (between the temp file and the rename) and before or after all writes.
    const spawnInit = (pauseMs?: number) =>
      new Deno.Command(Deno.execPath(), {
        args: pauseMs === undefined
          ? lychdArgs(["init", ...NEW])
          : pausedLychdArgs(pauseMs, ["init", ...NEW]),
        clearEnv: true,
        env: testEnv(sb),
        stdout: "null",
        stderr: pauseMs === undefined ? "null" : "piped",
      }).spawn();
    const durations: number[] = [];
    for (let i = 0; i < 3; i++) {
      await restore(old);
      const t0 = performance.now();
      await spawnInit().status;
      durations.push(performance.now() - t0);
    }
    const full = durations.sort((a, b) => a - b)[1];
    await restore(old);
    const writes = await killAfterWrites(spawnInit(PAUSE_MS), Infinity);
    assert(writes >= changed.length, `the paused run reported ${writes} writes`);

    let killedMidway = 0;
    let inconsistencies = 0;
    for (let i = 0; i < RUNS; i++) {
      await restore(old);
      if (i % 4 === 3) {
        const child = spawnInit();
        await new Promise((r) => setTimeout(r, full * Math.random() * 1.05));
        try {
          child.kill("SIGKILL");
        } catch { /* already exited */ }
        await child.status;
      } else {
        // Two in three: between two file writes (after the intent manifest, before the final
        // one); the rest anywhere from just after the intent to just before the final manifest.
        const k = i % 4 === 2
          ? 1 + Math.floor(Math.random() * (writes - 1))
          : 2 + Math.floor(Math.random() * (writes - 3));
        await killAfterWrites(spawnInit(PAUSE_MS), k);
      }

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
      `  ${RUNS} kills (full run ${full.toFixed(0)} ms, ${writes} writes); ${killedMidway} left ` +
        `some changed files old and others new; inconsistencies: ${inconsistencies}`,
    );
    assertEquals(inconsistencies, 0);
    assert(
      killedMidway >= RUNS * 0.3,
      `only ${killedMidway} of ${RUNS} kills landed mid-update: the test proves little`,
    );
  } finally {
    await sb.cleanup();
  }
});

/**
 * Read a paused child's `wrote` lines; after the `n`th, wait a random part of the pause and
 * SIGKILL it. Returns how many writes it reported (all of them if `n` is never reached).
 */
async function killAfterWrites(child: Deno.ChildProcess, n: number): Promise<number> {
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = 0;
  let rest = "";
  while (seen < n) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (rest + value).split("\n");
    rest = lines.pop()!;
    seen += lines.filter((l) => l.startsWith("lychd-test: wrote ")).length;
  }
  if (seen >= n) {
    await new Promise((r) => setTimeout(r, Math.random() * PAUSE_MS));
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }
  await reader.cancel().catch(() => {});
  await child.status;
  return seen;
}
