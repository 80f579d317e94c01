/** `lychd stop [--all]`: stop the engine (every soulstone), or everything lychd runs. */
import type { ConfigOptions } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import type { Host } from "../host.ts";
import { lychdLine, openSetup } from "../setup.ts";
import { controlFolder, GateClient } from "../gate/control.ts";
import { systemctl } from "../systemctl.ts";
import { reconcileMarks } from "../sleep.ts";
import { GATE_SERVICE, resolveEngines, soulstoneService } from "../units/model.ts";

export interface StopOptions {
  config: ConfigOptions;
  all: boolean;
}

export async function stop(host: Host, options: StopOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  const loc = setup.loc;
  const { config } = await loadConfig(host, setup.configPath, [], false);
  // Stopping units that are not running is a no-op, so all soulstones go in one call.
  const units = resolveEngines(config).map((e) => soulstoneService(e.name));
  if (options.all) {
    units.push("scribe.service", "harvester.service");
    if (config.gate.enabled) units.push(GATE_SERVICE);
  }
  // Behind the gate, clients learn at once that nothing serves, rather than waiting out the
  // hold for an engine that nobody starts.
  const folder = config.gate.enabled && !options.all ? controlFolder(loc) : null;
  const gate = folder === null ? null : new GateClient(host, folder);
  await gate?.stop(
    `no engine is active (stopped by \`lychd stop\`): start one with \`${
      lychdLine(setup, "swap ENGINE")
    }\``,
  );
  try {
    await systemctl(host, loc.systemctlScope, "stop", ...units);
  } catch (e) {
    // Whatever still runs is served again.
    await gate?.recover(null);
    throw e;
  } finally {
    // Stopped, none is asleep: a start by hand must not be skipped (docs/warm-swaps.md).
    await reconcileMarks(
      host,
      loc.systemctlScope,
      resolveEngines(config).filter((e) => e.sleep !== null),
    );
  }
  host.out(`Stopped ${options.all ? "every lychd unit" : "the engine"}: ${units.join(" ")}\n`);
  if (!options.all) {
    host.out(
      `The harvester and scribe${
        config.gate.enabled ? " and the gate (which holds requests until an engine serves)" : ""
      } keep running (lychd stop --all stops them too).\n`,
    );
  }
  return 0;
}
