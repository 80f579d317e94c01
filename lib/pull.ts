/**
 * Fetching images (and model weights) ahead of time, visibly: `lychd pull` and `init --pull`.
 * Progress: on a terminal Podman draws its own; otherwise its output is passed on line by line.
 */
import type { LychdConfig } from "./config/types.ts";
import { GRAFANA_IMAGE, PROMETHEUS_IMAGE } from "./engines.ts";
import { LychdError } from "./errors.ts";
import type { Host } from "./host.ts";
import { explainPullFailure, imageExists } from "./images.ts";
import type { Locations } from "./paths.ts";
import { type Engine, resolveEngines } from "./units/model.ts";

/** Shared with `init --pull`. Exit code 0 if everything is on the host afterwards. */
export async function pullFor(
  host: Host,
  loc: Locations,
  config: LychdConfig,
  names: string[],
  models: boolean,
): Promise<number> {
  const all = resolveEngines(config);
  const unknown = names.filter((n) => !all.some((e) => e.name === n));
  if (unknown.length) {
    throw new LychdError(
      `unknown engine ${unknown.join(", ")}; configured: ${all.map((e) => e.name).join(", ")}`,
      2,
    );
  }
  const engines = names.length ? all.filter((e) => names.includes(e.name)) : all;
  const images = [
    ...new Set([
      ...engines.map((e) => e.image),
      ...(names.length
        ? []
        : [config.harvester.image ?? PROMETHEUS_IMAGE, config.scribe.image ?? GRAFANA_IMAGE]),
    ]),
  ];

  const pulled: string[] = [];
  const present: string[] = [];
  const failed: string[] = [];
  for (const image of images) {
    const exists = await imageExists(host, image);
    if (exists === null) {
      throw new LychdError("podman is not installed (or does not answer): lychd pull needs it.");
    }
    if (exists) {
      present.push(image);
      host.out(`present  ${image}\n`);
      continue;
    }
    host.out(`pulling  ${image}\n`);
    const { code, output } = await runShowingProgress(host, ["pull", image]);
    if (code === 0) pulled.push(image);
    else {
      failed.push(image);
      host.err(`FAILED   ${image}: ${explainPullFailure(output)}\n`);
    }
  }

  const modelFailures = models ? await pullModels(host, loc, config, engines) : 0;
  host.out(
    `\nImages: ${pulled.length} pulled, ${present.length} already present, ${failed.length} failed` +
      (failed.length ? ` (${failed.join(", ")})` : "") + ".\n",
  );
  return failed.length || modelFailures ? 1 : 0;
}

/** Download each engine's model into the shared cache with the engine's own image. */
async function pullModels(
  host: Host,
  loc: Locations,
  config: LychdConfig,
  engines: Engine[],
): Promise<number> {
  const cache = config.modelCache ?? loc.modelCache;
  let failures = 0;
  for (const e of engines) {
    const command = e.model && e.cartridge ? e.cartridge.download(e.model) : null;
    if (!command) {
      host.out(
        `model    ${e.name}: ${
          e.model?.startsWith("/")
            ? `a local file (${e.model}), nothing to download`
            : e.cartridge
            ? "this engine fetches its model itself on its first start"
            : "a custom engine: lychd does not know how it gets its model"
        }\n`,
      );
      continue;
    }
    if (!(await imageExists(host, e.image))) {
      host.err(`model    ${e.name}: its image ${e.image} is not here; pull the image first\n`);
      failures++;
      continue;
    }
    const secrets = Object.entries({ ...config.secrets, ...e.settings.secrets })
      .flatMap(([env, name]) => ["--secret", `${name},type=env,target=${env}`]);
    host.out(`model    ${e.name}: downloading ${e.model} into ${cache}\n`);
    await host.mkdirp(cache, 0o755);
    const { code, output } = await runShowingProgress(host, [
      "run",
      "--rm",
      "--pull=never",
      "-v",
      `${cache}:${e.cartridge!.modelCacheTarget}:z`,
      ...secrets,
      "--entrypoint",
      command[0],
      e.image,
      ...command.slice(1),
    ]);
    if (code !== 0) {
      failures++;
      host.err(`FAILED   model ${e.model}: ${explainPullFailure(output)}\n`);
    }
  }
  return failures;
}

/** podman with its own progress on a terminal; line by line (and kept for errors) otherwise. */
async function runShowingProgress(
  host: Host,
  args: string[],
): Promise<{ code: number; output: string }> {
  if (host.isTerminal("stderr")) {
    // On a terminal Podman draws its progress bars; errors go to the terminal as well, so the
    // explanation falls back to a generic message.
    const code = await host.runAttached("podman", args);
    return { code, output: "" };
  }
  let output = "";
  const code = await host.runLines("podman", args, (line) => {
    output += line + "\n";
    host.out(`         ${line}\n`);
  });
  return { code, output };
}
