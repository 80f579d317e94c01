/**
 * Which installation a command acts on, resolved once per command: the mode's locations, the
 * manifest, and the lychd.yaml the installed units were rendered from.
 *
 * `init` records that lychd.yaml's path in the manifest; every later command uses it when no
 * --config is given, and refuses a --config that names another file while units exist, so that
 * nothing is ever re-rendered from another file, or from the defaults, behind the user's back.
 */
import { type Manifest, readManifest } from "./apply.ts";
import type { ConfigOptions } from "./config/types.ts";
import { LychdError, UsageError } from "./errors.ts";
import type { Host } from "./host.ts";
import { type Locations, locations, type Mode } from "./paths.ts";

export interface Setup {
  loc: Locations;
  /** The lychd.yaml in use: --config, else the one recorded at init, else the mode's default. */
  configPath: string;
  manifestPath: string;
  manifest: Manifest;
  /** Whether units are installed (the manifest records files). */
  installed: boolean;
  /** The flags a hint must carry to reach this same setup again: --system, --config FILE. */
  flags: string[];
}

export type Purpose =
  /** init: may create the setup; --force may adopt another lychd.yaml. */
  | { kind: "init"; force: boolean }
  /** doctor: looks at the host whether or not lychd is set up. */
  | { kind: "inspect" }
  /** render: writes into a folder of its own, so any lychd.yaml will do. */
  | { kind: "render" }
  /** Every other command: the setup must exist. */
  | { kind: "operate" };

export function manifestPathFor(loc: Locations): string {
  return `${loc.dataDir}/manifest.json`;
}

export async function openSetup(
  host: Host,
  options: Pick<ConfigOptions, "system" | "configPath">,
  purpose: Purpose,
): Promise<Setup> {
  const mode: Mode = options.system ? "system" : "user";
  const loc = locations(mode, (n) => host.env(n));
  const manifestPath = manifestPathFor(loc);
  const manifest = await readManifest(host, manifestPath);
  const installed = Object.keys(manifest.files).length > 0;
  const recorded = manifest.config?.path ?? null;
  const given = options.configPath === null ? null : host.absolute(options.configPath);
  const adopting = purpose.kind === "render" || (purpose.kind === "init" && purpose.force);
  if (given !== null && recorded !== null && given !== recorded && installed && !adopting) {
    throw new UsageError(
      `lychd's ${mode}-mode units here were rendered from ${recorded}, but --config names ` +
        `${given}. Leave --config out (or give ${recorded}) to act on what is installed` +
        (purpose.kind === "init"
          ? `; to render the units from ${given} instead, run \`lychd init${
            mode === "system" ? " --system" : ""
          } --config ${given} --force\`.`
          : "."),
    );
  }
  const configPath = given ?? recorded ?? loc.configFile;
  if (purpose.kind === "operate" && !installed) await notInstalled(host, loc);
  const flags = [
    ...(mode === "system" ? ["--system"] : []),
    ...(configPath !== loc.configFile ? ["--config", configPath] : []),
  ];
  return { loc, configPath, manifestPath, manifest, installed, flags };
}

/** A lychd command line for a hint, with the flags that reach this setup: `lychd swap --system x`. */
export function lychdLine(setup: Pick<Setup, "flags">, command: string): string {
  const [verb, ...rest] = command.split(" ");
  return ["lychd", verb, ...setup.flags, ...rest].join(" ");
}

/** No units in this mode: say so, and point at the other mode's install if there is one. */
async function notInstalled(host: Host, loc: Locations): Promise<never> {
  const other: Mode = loc.mode === "user" ? "system" : "user";
  let otherInstalled = false;
  try {
    const otherLoc = locations(other, (n) => host.env(n));
    const m = await readManifest(host, manifestPathFor(otherLoc));
    otherInstalled = Object.keys(m.files).length > 0;
  } catch {
    // Unreadable (not root, outside lychd's permissions): nothing to point at.
  }
  if (otherInstalled) {
    throw new LychdError(
      `lychd is not set up in ${loc.mode} mode here, but it is in ${other} mode: run the command ` +
        (other === "system" ? "again with --system (as root)." : "again without --system."),
    );
  }
  throw new LychdError(
    `lychd is not set up in ${loc.mode} mode here (no units recorded in ` +
      `${manifestPathFor(loc)}): run \`lychd init${
        loc.mode === "system" ? " --system" : ""
      }\` first.`,
  );
}
