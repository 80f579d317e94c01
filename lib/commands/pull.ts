/**
 * `lychd pull [ENGINE...] [--models]`: fetch images (and, with --models, model weights) ahead of
 * time, visibly, so that a swap never spends its start timeout on a multi-GB download. The
 * soulstone units run with `--pull=never` for that reason.
 */
import type { ConfigOptions } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import type { Host } from "../host.ts";
import { openSetup } from "../setup.ts";
import { pullFor } from "../pull.ts";

export interface PullOptions {
  config: ConfigOptions;
  /** Engines to pull for; [] = every configured engine plus the harvester and scribe. */
  engines: string[];
  models: boolean;
}

export async function pull(host: Host, options: PullOptions): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "operate" });
  const loc = setup.loc;
  const { config } = await loadConfig(host, setup.configPath, [], false);
  return await pullFor(host, loc, config, options.engines, options.models);
}
