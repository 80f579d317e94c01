/** Helpers to build plans in memory and put them through the real Quadlet and systemd. */
import type { Override } from "../../lib/config/yaml.ts";
import { resolveConfig } from "../../lib/config/load.ts";
import { ConfigError } from "../../lib/errors.ts";
import { locations, type Mode } from "../../lib/paths.ts";
import { buildPlan, type Plan } from "../../lib/plan.ts";
import { run, TOOLS } from "./tools.ts";

export const TEST_HOME = "/home/ada";
/** What the gate unit runs in plans built here (where the release install puts lychd). */
export const LYCHD_PROGRAM = ["/usr/local/bin/lychd"];

/** The messages lychd.yaml `yaml` (with `overrides`) is refused with; throws if it is accepted. */
export function configProblems(yaml: string | null, overrides: Override[] = []): string {
  try {
    resolveConfig(yaml, `${TEST_HOME}/.config/lychd/lychd.yaml`, overrides);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error("expected a ConfigError");
}

export function planFor(
  yaml: string | null,
  overrides: Override[] = [],
  mode: Mode = "user",
): Plan {
  const loc = locations(mode, (n) => (n === "HOME" ? TEST_HOME : undefined));
  const { config, configText } = resolveConfig(yaml, loc.configFile, overrides);
  return buildPlan(config, loc, configText, { program: LYCHD_PROGRAM, configPath: loc.configFile });
}

export function unitFiles(plan: Plan): Record<string, string> {
  return Object.fromEntries(
    plan.files.filter((f) => f.root === "quadlet").map((f) => [f.path, f.content]),
  );
}

/** The plain systemd units of a plan (lychd-gate.service). */
export function systemdUnits(plan: Plan): Record<string, string> {
  return Object.fromEntries(
    plan.files.filter((f) => f.root === "units").map((f) => [f.path, f.content]),
  );
}

/** Run the real Quadlet generator on the units; service name -> generated unit text. */
export async function quadlet(
  units: Record<string, string>,
  mode: Mode,
): Promise<{ services: Record<string, string>; stderr: string; code: number }> {
  const dir = await Deno.makeTempDir({ prefix: "lychd-quadlet-" });
  try {
    for (const [name, text] of Object.entries(units)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    const r = await run(TOOLS.quadlet!, ["-dryrun", ...(mode === "user" ? ["-user"] : [])], {
      QUADLET_UNIT_DIRS: dir,
    });
    const services: Record<string, string> = {};
    let current: string | null = null;
    for (const line of r.stdout.split("\n")) {
      const m = line.match(/^---(.+)---$/);
      if (m) {
        current = m[1];
        services[current] = "";
      } else if (current) services[current] += line + "\n";
    }
    // Quadlet reports each file it loads; anything else on stderr is a finding.
    const stderr = r.stderr.split("\n").filter((l) => l && !/Loading source unit file/.test(l))
      .join("\n");
    return { services, stderr, code: r.code };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** systemd-analyze verify on generated services; returns everything it printed. */
export async function systemdVerify(services: Record<string, string>, mode: Mode): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "lychd-verify-" });
  const runtime = await Deno.makeTempDir({ prefix: "lychd-xdg-" });
  try {
    for (const [name, text] of Object.entries(services)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    const r = await new Deno.Command(TOOLS.systemdAnalyze!, {
      args: [
        ...(mode === "user" ? ["--user"] : []),
        "verify",
        "--man=no",
        ...Object.keys(services),
      ],
      cwd: dir,
      env: { XDG_RUNTIME_DIR: runtime, SYSTEMD_LOG_COLOR: "0" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const d = new TextDecoder();
    const out = (d.decode(r.stdout) + d.decode(r.stderr)).trim();
    return r.code === 0 ? out : `exit ${r.code}\n${out}`;
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(runtime, { recursive: true });
  }
}

/**
 * `systemd-analyze security --offline=yes` on one system service: its overall exposure (0 = locked
 * down, 10 = as exposed as can be) and the lines it printed.
 */
export async function securityExposure(
  name: string,
  text: string,
): Promise<{ exposure: number; report: string }> {
  const dir = await Deno.makeTempDir({ prefix: "lychd-security-" });
  try {
    await Deno.writeTextFile(`${dir}/${name}`, text);
    const r = await new Deno.Command(TOOLS.systemdAnalyze!, {
      args: ["security", "--offline=yes", "--no-pager", `${dir}/${name}`],
      env: { SYSTEMD_LOG_COLOR: "0", SYSTEMD_COLORS: "0" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const d = new TextDecoder();
    const report = (d.decode(r.stdout) + d.decode(r.stderr)).trim();
    const m = report.match(/Overall exposure level for \S+: (\d+\.\d+)/);
    if (m === null) throw new Error(`systemd-analyze security printed no exposure:\n${report}`);
    return { exposure: Number(m[1]), report };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Every value of `key` in `[section]` of a unit text. */
export function unitValues(text: string, section: string, key: string): string[] {
  const out: string[] = [];
  let inSection = false;
  for (const line of text.split("\n")) {
    const s = line.match(/^\[(.+)\]$/);
    if (s) inSection = s[1] === section;
    else if (inSection && line.startsWith(`${key}=`)) out.push(line.slice(key.length + 1));
  }
  return out;
}
