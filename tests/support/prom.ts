/** Writing a rendered Prometheus config where promtool and a test Prometheus can read it. */
import type { Plan } from "../../lib/plan.ts";
import { run, TOOLS } from "./tools.ts";

/**
 * The plan's prometheus.yml and rules in `dir`, with the container paths rewritten to `dir`
 * and, if given, the scrape target rewritten to a test server's address.
 */
export async function writePrometheusFiles(
  plan: Plan,
  dir: string,
  target?: string,
): Promise<string> {
  const file = (p: string) => plan.files.find((f) => f.root === "data" && f.path === p)!.content;
  await Deno.mkdir(`${dir}/rules`, { recursive: true });
  let config = file("prometheus/prometheus.yml").replace("/etc/prometheus/rules/", `${dir}/rules/`);
  if (target) config = config.replaceAll("127.0.0.1:8081", target);
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
