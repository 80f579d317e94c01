/**
 * Driving ../shared/sandbox/sdsandbox (a disposable systemd 252 with Quadlet and Podman) from
 * tests. Without root it cannot run: tests skip loudly, except in CI, where they fail. (Other
 * reasons, such as no cgroup2, make `sdsandbox up` fail with its own message.)
 */
import { IN_CI } from "./tools.ts";

export const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const SDSANDBOX = Deno.env.get("SDSANDBOX") ?? `${ROOT}/../shared/sandbox/sdsandbox`;
export const DENO = Deno.execPath();

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export async function sdsandbox(args: string[], stdin?: string): Promise<Run> {
  const child = new Deno.Command(SDSANDBOX, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const r = await child.output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

/** Run a command inside the guest, in the checkout. */
export function guest(cmd: string[], stdin?: string): Promise<Run> {
  return sdsandbox(["exec", "--cwd", ROOT, "--", ...cmd], stdin);
}

/** lychd inside the guest, exactly as `deno task lychd` runs it. */
export function lychd(...args: string[]): Promise<Run> {
  return guest([DENO, "run", "-q", "-P", "--frozen", `${ROOT}/main.ts`, ...args]);
}

/** `ignore` for Deno.test: why the sandbox cannot run here, or false if it can. */
export function sandboxUnavailable(): boolean {
  let reason: string | null = null;
  try {
    Deno.statSync(SDSANDBOX);
  } catch {
    reason = `${SDSANDBOX} not found`;
  }
  if (!reason) {
    const id = new Deno.Command("id", { args: ["-u"], stdout: "piped" }).outputSync();
    if (new TextDecoder().decode(id.stdout).trim() !== "0") reason = "not root";
  }
  if (!reason) return false;
  // A CI without the sandbox tool at all (the release workflow) says so explicitly.
  if (IN_CI && Deno.env.get("LYCHD_NO_SANDBOX") !== "1") {
    throw new Error(`the systemd sandbox cannot run (${reason}); CI must run the e2e tests`);
  }
  console.error(`\n!!! SKIPPING systemd-sandbox tests: ${reason}\n`);
  return true;
}

/** A Prometheus image from this machine's own binary (Debian's 2.x), to run the harvester unit. */
export async function buildPrometheusImage(): Promise<string> {
  const name = "localhost/lychd-prometheus:1";
  const r = await sdsandbox([
    "image",
    name,
    "--from-host",
    "/usr/bin/prometheus",
    "--change",
    'ENTRYPOINT ["/usr/bin/prometheus"]',
  ]);
  if (r.code !== 0) throw new Error(`sdsandbox image (prometheus) failed:\n${r.stderr}`);
  return name;
}

/** Builds the fake engine image (Deno + tests/e2e/fake_engine.ts); returns its name. */
export async function buildFakeEngineImage(
  name = "localhost/lychd-fake-engine:1",
): Promise<string> {
  const deno = Deno.realPathSync(DENO);
  const r = await sdsandbox([
    "image",
    name,
    "--from-host",
    deno,
    "--file",
    `${ROOT}/tests/e2e/fake_engine.ts:/app/engine.ts`,
    "--change",
    "ENV DENO_NO_UPDATE_CHECK=1",
    "--change",
    "ENV DENO_DIR=/app/.deno",
    "--change",
    `ENTRYPOINT ["${deno}", "run", "--allow-net", "--allow-env", "/app/engine.ts"]`,
  ]);
  if (r.code !== 0) throw new Error(`sdsandbox image failed:\n${r.stderr}`);
  return name;
}
