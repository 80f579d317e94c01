/**
 * `lychd pull [ENGINE...] [--models]`: fetch images (and, with --models, model weights) ahead of
 * time, visibly, so that a swap never spends its start timeout on a multi-GB download. The
 * soulstone units run with `--pull=never` for that reason.
 */
import type { ConfigOptions } from "../cli.ts";
import { loadConfig } from "../config/load.ts";
import type { Host } from "../host.ts";
import { locations } from "../paths.ts";
import { pullFor } from "../pull.ts";

export interface PullOptions {
  config: ConfigOptions;
  /** Engines to pull for; [] = every configured engine plus the harvester and scribe. */
  engines: string[];
  models: boolean;
}

export async function pull(host: Host, options: PullOptions): Promise<number> {
  const loc = locations(options.config.system ? "system" : "user", (n) => host.env(n));
  const { config } = await loadConfig(host, loc, options.config);
  return await pullFor(host, loc, config, options.engines, options.models);
}
