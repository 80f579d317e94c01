/**
 * Start-up benchmark (issue: init). Runs, alternating in one session so that machine load hits
 * all alike: `deno run` of a one-line hello script, `lychd --version`, and
 * `lychd init --dry-run --engines vllm,sglang,llama` (in an empty throwaway HOME), each the way
 * `deno task lychd` runs it. Prints medians and the ratios against the targets:
 * --version <= 1.3x hello, init --dry-run <= 2.5x hello.
 *
 *   deno task bench [runs]      (default 15 runs each)
 */
const ROOT = new URL("..", import.meta.url).pathname;
const runs = Number(Deno.args[0] ?? 15);
const home = await Deno.makeTempDir({ prefix: "lychd-bench-" });
const env = {
  HOME: home,
  PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
  NO_COLOR: "1",
};

const cases: Record<string, string[]> = {
  hello: ["run", "-q", `${ROOT}scripts/hello.ts`],
  "lychd --version": ["run", "-q", "-P", `${ROOT}main.ts`, "--version"],
  "lychd init --dry-run": [
    "run",
    "-q",
    "-P",
    `${ROOT}main.ts`,
    "init",
    "--dry-run",
    "--engines",
    "vllm,sglang,llama",
  ],
};

async function once(args: string[]): Promise<number> {
  const t0 = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    clearEnv: true,
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (r.code !== 0) {
    throw new Error(`${args.join(" ")}: exit ${r.code}\n${new TextDecoder().decode(r.stderr)}`);
  }
  return ms;
}

const times: Record<string, number[]> = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
for (const args of Object.values(cases)) await once(args); // warm the module cache
for (let i = 0; i < runs; i++) {
  for (const [name, args] of Object.entries(cases)) times[name].push(await once(args));
}
await Deno.remove(home, { recursive: true });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = median(times.hello);
const targets: Record<string, number> = { "lychd --version": 1.3, "lychd init --dry-run": 2.5 };
console.log(`${runs} runs each, alternating; medians:`);
let ok = true;
for (const name of Object.keys(cases)) {
  const m = median(times[name]);
  const ratio = m / base;
  const target = targets[name];
  const verdict = target
    ? (ratio <= target ? `ok (target <= ${target}x)` : `OVER target ${target}x`)
    : "";
  if (target && ratio > target) ok = false;
  console.log(
    `  ${name.padEnd(22)} ${m.toFixed(1).padStart(7)} ms  ${ratio.toFixed(2)}x  ${verdict}`,
  );
}
Deno.exit(ok ? 0 : 1);
