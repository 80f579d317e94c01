/**
 * The real validators (Quadlet, systemd-analyze, promtool, prometheus). Tests that need one
 * are skipped with a loud message when it is missing locally; in CI (CI=true) a missing
 * validator fails the run instead (see `requireTools`).
 */
const QUADLET_CANDIDATES = [
  Deno.env.get("QUADLET") ?? "",
  "/usr/local/libexec/podman/quadlet",
  "/usr/libexec/podman/quadlet",
  "/usr/lib/podman/quadlet",
  "/var/cache/sdsandbox/quadlet",
];

function which(name: string): string | null {
  if (name.startsWith("/")) return isExecutable(name) ? name : null;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && isExecutable(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return null;
}

function isExecutable(path: string): boolean {
  try {
    const s = Deno.statSync(path);
    return s.isFile && ((s.mode ?? 0) & 0o111) !== 0;
  } catch {
    return false;
  }
}

export const TOOLS = {
  quadlet: QUADLET_CANDIDATES.filter((p) => p).map(which).find((p) => p) ?? null,
  systemdAnalyze: which("systemd-analyze"),
  promtool: which("promtool"),
  prometheus: which("prometheus"),
  /** systemd-analyze verify checks that ExecStart's program exists. */
  podman: which("/usr/bin/podman"),
};

export const IN_CI = Deno.env.get("CI") === "true";

/** `ignore` for Deno.test: true (skip) when a tool is missing outside CI; throws in CI. */
export function requireTools(...names: (keyof typeof TOOLS)[]): boolean {
  const missing = names.filter((n) => !TOOLS[n]);
  if (missing.length === 0) return false;
  const message = `MISSING VALIDATOR(S): ${missing.join(", ")}. Install them with .ci/run ` +
    "(or scripts/install-quadlet.sh and apt-get install prometheus podman).";
  if (IN_CI) throw new Error(`${message} CI must not skip these tests.`);
  console.error(`\n!!! SKIPPING: ${message}\n`);
  return true;
}

export async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}
