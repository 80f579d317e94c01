/**
 * `deno task compile [--target TRIPLE] [--output FILE]`: one self-contained lychd binary with the
 * templates and dashboards embedded (text imports) and deno.json's `default` permission set baked
 * in (`compile.permissions`), no permission prompts, only the npm packages actually used, and the
 * commit for `lychd --version`.
 *
 * `deno compile` needs the `denort` runtime for the target, which it downloads from Deno's
 * servers. Where that host is unreachable (air-gapped build machines, this CI), point
 * DENORT_BIN at a `denort` binary of the same Deno version (from the release page's
 * denort-<target>.zip), or pre-fill $DENO_DIR/dl/release/v<version>/denort-<target>.zip.
 */
const ROOT = new URL("..", import.meta.url).pathname;
const TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

function flag(name: string): string | undefined {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

const target = flag("--target");
if (target && !TARGETS.includes(target)) {
  console.error(`unknown --target ${target}; one of: ${TARGETS.join(", ")}`);
  Deno.exit(2);
}
const output = flag("--output") ?? `${ROOT}dist/lychd${target ? `-${target}` : ""}`;

async function git(...args: string[]): Promise<string> {
  const r = await new Deno.Command("git", { args, cwd: ROOT, stdout: "piped", stderr: "null" })
    .output()
    .catch(() => null);
  return r?.success ? new TextDecoder().decode(r.stdout).trim() : "";
}
const commit = (await git("rev-parse", "--short=12", "HEAD")) || "unknown";
const dirty = (await git("status", "--porcelain")) ? "-dirty" : "";

const outDir = output.slice(0, output.lastIndexOf("/")) || ".";
await Deno.mkdir(outDir, { recursive: true });
const envFile = `${outDir}/build.env`;
await Deno.writeTextFile(envFile, `LYCHD_COMMIT=${commit}${dirty}\n`);

const args = [
  "compile",
  "-P",
  "--no-prompt",
  "--frozen",
  "--exclude-unused-npm",
  `--env-file=${envFile}`,
  ...(target ? ["--target", target] : []),
  "--output",
  output,
  `${ROOT}main.ts`,
];
console.error(`deno ${args.join(" ")}`);
const child = new Deno.Command(Deno.execPath(), {
  args,
  cwd: ROOT,
  stdout: "inherit",
  stderr: "piped",
}).spawn();
const stderr = new TextDecoder().decode((await child.output()).stderr);
Deno.stderr.writeSync(new TextEncoder().encode(stderr));
if (!(await child.status).success) {
  if (
    /denort|download|dl\.deno\.land|error sending request/i.test(stderr) &&
    !Deno.env.get("DENORT_BIN")
  ) {
    console.error(
      "\ndeno compile could not download the denort runtime for the target (no access to Deno's " +
        "download host?).\nSet DENORT_BIN to a denort binary of this Deno version " +
        `(${Deno.version.deno}, from denort-${
          target ?? "<target>"
        }.zip on the Deno release page), ` +
        "or pre-fill $DENO_DIR/dl/release/v" + Deno.version.deno + "/, then run this again.",
    );
  }
  Deno.exit(1);
}
console.error(`built ${output} (commit ${commit}${dirty})`);
