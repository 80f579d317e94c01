/**
 * Config -> Plan: every file lychd will write, with its exact bytes and mode. Pure: no I/O.
 * Apply (lib/apply.ts) compares the plan with the disk and writes it.
 */
import type { LychdConfig } from "./config/types.ts";
import { DASHBOARDS } from "./dashboards.ts";
import { BUILTIN_CARTRIDGES, DATASOURCE_UID, PROMETHEUS_PORT, STANDARD_PORT } from "./engines.ts";
import type { Locations } from "./paths.ts";
import { renderTemplate } from "./units/render.ts";
import {
  compileCacheDirs,
  enginePort,
  engineUnits,
  GATE_METRICS_PATH,
  gateUnit,
  GRAFANA_DASHBOARDS_MOUNT,
  grafanaUnit,
  prometheusUnit,
  type SelfCommand,
} from "./units/model.ts";
import { VERSION } from "./version.ts";
import RECORDING_RULES from "../templates/lychd.rules.yml" with { type: "text" };

/** Which folder a planned file belongs in; Apply maps each to a real directory. */
export type Root = "quadlet" | "units" | "data" | "config";

export interface PlannedFile {
  root: Root;
  /** Relative to the root's folder. */
  path: string;
  content: string;
  mode: number;
  /**
   * Guarded files are lychd's: recorded in the manifest, never overwritten if edited.
   * lychd.yaml is the user's: it is updated in place, keeping their edits.
   */
  guarded: boolean;
}

export interface Plan {
  files: PlannedFile[];
  /** Host folders the units mount and that must exist before a container starts. */
  directories: string[];
}

const UNIT_MODE = 0o644;
/** Read by Prometheus (uid nobody) and Grafana (uid 472) inside their containers. */
const SHARED_DATA_MODE = 0o644;
const CONFIG_MODE = 0o600;

export function buildPlan(
  config: LychdConfig,
  loc: Locations,
  configText: string,
  self: SelfCommand,
): Plan {
  const common = {
    version: VERSION,
    standard_port: STANDARD_PORT,
    prometheus_port: PROMETHEUS_PORT,
    datasource_uid: DATASOURCE_UID,
    dashboards_mount: GRAFANA_DASHBOARDS_MOUNT,
    scrape_interval: config.harvester.scrapeInterval,
  };
  const files: PlannedFile[] = [];
  const unit = (path: string, template: string, data: unknown) =>
    files.push({
      root: "quadlet",
      path,
      content: renderTemplate(template, { ...common, unit: data }),
      mode: UNIT_MODE,
      guarded: true,
    });
  const systemdUnit = (path: string, template: string, data: unknown) =>
    files.push({
      root: "units",
      path,
      content: renderTemplate(template, { ...common, unit: data }),
      mode: UNIT_MODE,
      guarded: true,
    });
  const data = (path: string, content: string) =>
    files.push({ root: "data", path, content, mode: SHARED_DATA_MODE, guarded: true });

  const engines = engineUnits(config, loc);
  for (const u of engines) unit(u.fileName, "soulstone.j2", u);
  const prometheus = prometheusUnit(config, loc);
  unit(prometheus.fileName, "harvester.j2", prometheus);
  const grafana = grafanaUnit(config, loc);
  unit(grafana.fileName, "scribe.j2", grafana);
  if (config.gate.enabled) {
    const gate = gateUnit(config, loc, self);
    systemdUnit(gate.fileName, "lychd-gate.service.j2", gate);
  }

  data(
    "prometheus/prometheus.yml",
    renderTemplate("prometheus.yml.j2", {
      ...common,
      jobs: scrapeJobs(engines.map((u) => u.engine), enginePort(config)),
      engine_port: enginePort(config),
      gate: config.gate.enabled ? { metricsPath: GATE_METRICS_PATH } : null,
      dialects: BUILTIN_CARTRIDGES.map((c) => ({ prefix: c.dialect, engine: c.name })),
    }),
  );
  data("prometheus/rules/lychd.rules.yml", RECORDING_RULES);
  data(
    "grafana/provisioning/datasources/lychd.yaml",
    renderTemplate("grafana-datasource.yaml.j2", common),
  );
  data(
    "grafana/provisioning/dashboards/lychd.yaml",
    renderTemplate("grafana-dashboards.yaml.j2", common),
  );
  for (const u of engines) {
    const dashboard = DASHBOARDS[`soulstone-${u.engine.name}.json`];
    if (u.engine.builtin && dashboard) {
      data(`grafana/dashboards/soulstone-${u.engine.name}.json`, dashboard);
    }
  }
  data("grafana/dashboards/lychd-vessel.json", DASHBOARDS["lychd-vessel.json"]);

  files.push({
    root: "config",
    path: "lychd.yaml",
    content: configText,
    mode: CONFIG_MODE,
    guarded: false,
  });

  return {
    files,
    directories: [config.modelCache ?? loc.modelCache, ...compileCacheDirs(config, loc)],
  };
}

/** One scrape job per metrics path in use; "soulstone" for the standard /metrics. */
/**
 * One job per metrics path, scraping every port an engine with that path answers on: the engine
 * port, and the own port of each engine that sleeps (asleep, it still answers /metrics).
 */
function scrapeJobs(
  engines: { name: string; metricsPath: string; hostPort: number }[],
  enginePort: number,
) {
  const jobs = [{ name: "soulstone", metricsPath: "/metrics", ports: [] as number[] }];
  for (const e of engines) {
    let job = jobs.find((j) => j.metricsPath === e.metricsPath);
    if (!job) {
      job = { name: `soulstone-${e.name}`, metricsPath: e.metricsPath, ports: [] };
      jobs.push(job);
    }
    if (!job.ports.includes(e.hostPort)) job.ports.push(e.hostPort);
  }
  if (jobs[0].ports.length === 0) jobs[0].ports.push(enginePort);
  return jobs;
}
