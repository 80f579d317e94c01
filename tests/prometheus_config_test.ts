/** The rendered prometheus.yml and recording rules pass the real promtool. */
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { promtool, writePrometheusFiles } from "./support/prom.ts";
import { requireTools } from "./support/tools.ts";
import { planFor } from "./support/units.ts";

const ignore = requireTools("promtool");

Deno.test({
  name: "promtool: prometheus.yml and the recording rules are valid",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lychd-prom-" });
    try {
      const config = await writePrometheusFiles(planFor(null), dir);
      const c = await promtool("check", "config", config);
      assertEquals(c.code, 0, c.stdout + c.stderr);
      assertMatch(c.stdout + c.stderr, /SUCCESS: \d+ rules found/);
      const r = await promtool("check", "rules", `${dir}/rules/lychd.rules.yml`);
      assertEquals(r.code, 0, r.stdout + r.stderr);
      assertMatch(r.stdout, /SUCCESS: \d+ rules found/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "promtool: a custom engine's metrics path gets its own job; the check fails on bad config",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lychd-prom-" });
    try {
      const plan = planFor(`engines: [vllm, tabby]
harvester: {scrape_interval: 15s}
cartridges:
  tabby: {image: ghcr.io/theroyallab/tabbyapi:v0.9.0, port: 5000, metrics_path: /api/metrics}
`);
      const config = await writePrometheusFiles(plan, dir);
      const text = await Deno.readTextFile(config);
      assertMatch(text, /job_name: soulstone-tabby\n +metrics_path: \/api\/metrics/);
      assertMatch(text, /scrape_interval: 15s/);
      assertEquals((await promtool("check", "config", config)).code, 0);
      // The validator really validates: a key Prometheus 2 does not know is rejected.
      await Deno.writeTextFile(config, text.replace("global:", "global:\n  bogus_key: 1"));
      const bad = await promtool("check", "config", config);
      assert(bad.code !== 0, "promtool accepted an unknown key");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
