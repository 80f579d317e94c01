/**
 * Dashboards, checked structurally and every query parsed by the real promtool (with Grafana's
 * placeholders substituted). tests/observability_test.ts runs them against a real Prometheus.
 */
import { DASHBOARDS } from "../lib/dashboards.ts";
import { DATASOURCE_UID } from "../lib/engines.ts";
import { renderDashboards } from "../scripts/gen_dashboards.ts";
import { assert, assertDeep, assertEquals } from "./support/assert.ts";
import { type Panel, panels, substitute } from "./support/dashboards.ts";
import { promtool } from "./support/prom.ts";
import { requireTools } from "./support/tools.ts";

Deno.test("dashboards: the committed JSON is what scripts/gen_dashboards.ts generates", () => {
  assertDeep(Object.keys(DASHBOARDS).sort(), Object.keys(renderDashboards()).sort());
  for (const [file, text] of Object.entries(renderDashboards())) {
    assertEquals(DASHBOARDS[file], text, `${file} is stale: run deno task dashboards`);
  }
});

Deno.test("dashboards: unique ids, the provisioned datasource everywhere, no ${DS_} inputs", () => {
  for (const [file, text] of Object.entries(DASHBOARDS)) {
    const d = JSON.parse(text);
    assert(!text.includes("${DS_") && !("__inputs" in d), `${file} has export inputs`);
    const all = d.panels as Panel[];
    assertEquals(new Set(all.map((p) => p.id)).size, all.length, `${file}: duplicate panel ids`);
    assert(all.some((p) => p.type === "row"), `${file}: no rows`);
    for (const p of panels(file)) {
      assertEquals(p.datasource?.uid, DATASOURCE_UID, `${file}: ${p.title}`);
      assert((p.targets ?? []).length > 0, `${file}: ${p.title} has no query`);
      for (const t of p.targets!) assertEquals(t.datasource.uid, DATASOURCE_UID);
    }
  }
  const rows = (file: string) =>
    (JSON.parse(DASHBOARDS[file]).panels as Panel[]).filter((p) => p.type === "row").map((p) =>
      p.title
    );
  for (const engine of ["vllm", "sglang", "llama"]) {
    assertDeep(rows(`soulstone-${engine}.json`), [
      "Traffic",
      "Latency",
      "Throughput",
      "Saturation",
      "Cache",
    ]);
  }
});

Deno.test({
  name: "dashboards: every query parses as PromQL (promtool check rules)",
  ignore: requireTools("promtool"),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lychd-dash-" });
    try {
      let rules = "groups:\n  - name: dashboards\n    rules:\n";
      let n = 0;
      for (const file of Object.keys(DASHBOARDS)) {
        for (const p of panels(file)) {
          for (const t of p.targets!) {
            rules += `      - record: dashboard:expr_${n++}\n        expr: ${
              JSON.stringify(substitute(t.expr))
            }\n`;
          }
        }
      }
      await Deno.writeTextFile(`${dir}/rules.yml`, rules);
      const r = await promtool("check", "rules", `${dir}/rules.yml`);
      assertEquals(r.code, 0, r.stdout + r.stderr);
      assert(r.stdout.includes(`SUCCESS: ${n} rules found`), r.stdout);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
