/**
 * Grafana's side, as far as it can be checked without Grafana (not packaged for Debian): the
 * provisioning files parse, name the datasource uid every dashboard uses and point at the folder
 * the scribe unit mounts; the unit mounts what the files expect. Dashboards: dashboards_test.ts
 * and, against a real Prometheus, observability_test.ts.
 */
import { parse } from "yaml";
import { DATASOURCE_UID } from "../lib/engines.ts";
import { assertDeep, assertEquals } from "./support/assert.ts";
import { planFor, unitValues } from "./support/units.ts";

Deno.test("grafana: provisioning files and the scribe unit agree with each other and the dashboards", () => {
  const plan = planFor(null, [], "system");
  const file = (root: string, path: string) =>
    plan.files.find((f) => f.root === root && f.path === path)!.content;

  const ds = parse(file("data", "grafana/provisioning/datasources/lychd.yaml"));
  assertEquals(ds.apiVersion, 1);
  assertEquals(ds.datasources.length, 1);
  assertDeep(
    { uid: ds.datasources[0].uid, type: ds.datasources[0].type, url: ds.datasources[0].url },
    { uid: DATASOURCE_UID, type: "prometheus", url: "http://127.0.0.1:9090" },
  );
  assertEquals(
    ds.datasources[0].jsonData.timeInterval,
    "5s",
    "Grafana's $__rate_interval follows the scrape interval",
  );

  const providers = parse(file("data", "grafana/provisioning/dashboards/lychd.yaml"));
  const dashboardsPath = providers.providers[0].options.path;

  const scribe = file("quadlet", "scribe.container");
  const volumes = unitValues(scribe, "Container", "Volume").map((v) => v.split(":"));
  const mounted = (hostDir: string) => volumes.find(([host]) => host === hostDir)?.[1];
  assertEquals(mounted("/var/lib/lychd/grafana/dashboards"), dashboardsPath);
  assertEquals(
    mounted("/var/lib/lychd/grafana/provisioning/datasources"),
    "/etc/grafana/provisioning/datasources",
  );
  assertEquals(
    mounted("/var/lib/lychd/grafana/provisioning/dashboards"),
    "/etc/grafana/provisioning/dashboards",
  );
  const env = unitValues(scribe, "Container", "Environment").join(" ");
  assertEquals(
    env.match(/GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH=(\S+)/)?.[1],
    `${dashboardsPath}/lychd-vessel.json`,
    "the overview is the home dashboard",
  );
  assertEquals(
    env.match(/GF_SECURITY_ADMIN_PASSWORD__FILE=(\S+)/)?.[1],
    "/run/secrets/lychd-grafana-admin",
  );
  assertDeep(unitValues(scribe, "Container", "Secret"), ["lychd-grafana-admin"]);
  // Every dashboard file the plan ships sits in the mounted folder.
  const shipped = plan.files.filter((f) => f.path.startsWith("grafana/dashboards/")).map((f) =>
    f.path.split("/").pop()
  );
  assertDeep(shipped.sort(), [
    "lychd-vessel.json",
    "soulstone-llama.json",
    "soulstone-sglang.json",
    "soulstone-vllm.json",
  ]);
});
