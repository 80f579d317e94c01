/** Writing a rendered Prometheus config where promtool and a test Prometheus can read it. */
import type { Plan } from "../../lib/plan.ts";
import { run, TOOLS } from "./tools.ts";

/** Test servers standing in for a scrape job's target: the engine, the gate. */
export interface TestTargets {
  /** Replaces the `soulstone` job's target (the engine: 8081, or its port behind the gate). */
  engine?: string;
  /** Replaces the `lychd-gate` job's target (the gate on 8081). */
  gate?: string;
}

/**
 * The plan's prometheus.yml and rules in `dir`, with the container paths rewritten to `dir`
 * and each given job's target rewritten to a test server's address.
 */
export async function writePrometheusFiles(
  plan: Plan,
  dir: string,
  targets: TestTargets = {},
): Promise<string> {
  const file = (p: string) => plan.files.find((f) => f.root === "data" && f.path === p)!.content;
  await Deno.mkdir(`${dir}/rules`, { recursive: true });
  let config = file("prometheus/prometheus.yml").replace("/etc/prometheus/rules/", `${dir}/rules/`);
  const retarget = (job: string, to: string) => {
    const re = new RegExp(`(- job_name: ${job}\\n(?: {4}.*\\n)*? +- targets: \\[")[^"]+`);
    if (!re.test(config)) throw new Error(`prometheus.yml has no job ${job} with a target`);
    config = config.replace(re, `$1${to}`);
  };
  if (targets.engine) retarget("soulstone", targets.engine);
  if (targets.gate) retarget("lychd-gate", targets.gate);
  await Deno.writeTextFile(`${dir}/prometheus.yml`, config);
  await Deno.writeTextFile(
    `${dir}/rules/lychd.rules.yml`,
    file("prometheus/rules/lychd.rules.yml"),
  );
  return `${dir}/prometheus.yml`;
}

export function promtool(...args: string[]) {
  return run(TOOLS.promtool!, args);
}
