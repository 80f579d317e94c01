/** `lychd logs [ENGINE|harvester|scribe|gate] [-f] [-n N]`: a unit's journal (the active engine by default). */
import type { ConfigOptions } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import { LychdError } from "../errors.ts";
import type { Host } from "../host.ts";
import { openSetup } from "../setup.ts";
import { showUnits } from "../systemctl.ts";
import { GATE_SERVICE, resolveEngines, soulstoneService } from "../units/model.ts";

export interface LogsOptions {
  config: ConfigOptions;
  target: string | null;
  follow: boolean;
  lines: number;
}

export async function logs(host: Host, options: LogsOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  const loc = setup.loc;
  const { config } = await loadConfig(host, setup.configPath, [], false);
  const engines = resolveEngines(config).map((e) => e.name);
  let unit: string;
  if (options.target === "harvester" || options.target === "scribe") {
    unit = `${options.target}.service`;
  } else if (options.target === "gate") {
    unit = GATE_SERVICE;
  } else if (options.target !== null) {
    if (!engines.includes(options.target)) {
      throw new LychdError(
        `no engine or watcher "${options.target}"; choose one of: ${
          [...engines, "harvester", "scribe", "gate"].join(", ")
        }`,
        2,
      );
    }
    unit = soulstoneService(options.target);
  } else {
    const units = engines.map(soulstoneService);
    const states = await showUnits(host, loc.systemctlScope, units, ["ActiveState"]);
    // The engine that runs (or tries to, or just failed); else the boot engine.
    const running = ["active", "activating", "deactivating", "failed"];
    unit = units.find((u) => running.includes(states[u]?.ActiveState)) ??
      soulstoneService(config.active);
  }
  const args = [...loc.systemctlScope, "-u", unit, "-n", String(options.lines), "--no-pager"];
  if (options.follow) args.push("-f");
  return await host.runAttached("journalctl", args);
}
