/**
 * lib/ is layered: a module imports only from its own layer or the ones below, so the core
 * (config -> units -> plan) never reaches up into setup, install, the commands or the CLI.
 * README "Code map" lists the modules; this is the rule they follow.
 */
import { assert, assertDeep } from "./support/assert.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Lowest first. A module not listed here fails the test: place it when you add it. */
const LAYERS: string[][] = [
  // Plain values and the one door to the world.
  [
    "errors.ts",
    "exit.ts",
    "text.ts",
    "duration.ts",
    "suggest.ts",
    "diff.ts",
    "version.ts",
    "engines.ts",
    "unit_syntax.ts",
    "permissions.ts",
    "host.ts",
  ],
  // lychd.yaml and the host's locations.
  ["config/yaml.ts", "config/types.ts", "config/validate.ts", "config/load.ts", "paths.ts"],
  // Units as data and text; talking to systemd, Podman and engines.
  [
    "units/model.ts",
    "units/render.ts",
    "dashboards.ts",
    "images.ts",
    "readiness.ts",
    "sleep.ts",
    "systemctl.ts",
    "gpu.ts",
    "gate/proxy.ts",
    "gate/model_scan.ts",
    "gate/control.ts",
    "gate/on_demand.ts",
    "gate/listen.ts",
  ],
  // Every file as a plan, and the plan on disk.
  ["plan.ts", "apply.ts", "pull.ts"],
  // What commands share.
  ["setup.ts", "install.ts"],
  // The commands and their argument table.
  [
    "cli.ts",
    "help.ts",
    "commands/init.ts",
    "commands/swap.ts",
    "commands/gate.ts",
    "commands/status.ts",
    "commands/stop.ts",
    "commands/logs.ts",
    "commands/pull.ts",
    "commands/doctor.ts",
    "commands/uninstall.ts",
    "commands/completions.ts",
  ],
];

const layerOf = new Map(LAYERS.flatMap((names, i) => names.map((n) => [n, i] as const)));

async function modules(dir = `${ROOT}lib`, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) out.push(...await modules(`${dir}/${e.name}`, `${prefix}${e.name}/`));
    else if (e.name.endsWith(".ts")) out.push(`${prefix}${e.name}`);
  }
  return out.sort();
}

/** The lib/ modules a module imports (static and dynamic), as paths relative to lib/. */
async function importsOf(module: string): Promise<string[]> {
  const text = await Deno.readTextFile(`${ROOT}lib/${module}`);
  const specifiers = [...text.matchAll(/(?:from|import\()\s*"(\.{1,2}\/[^"]+\.ts)"/g)].map((m) =>
    m[1]
  );
  const base = new URL(`file://${ROOT}lib/${module}`);
  return specifiers.map((s) => new URL(s, base).pathname)
    .filter((p) => p.startsWith(`${ROOT}lib/`))
    .map((p) => p.slice(`${ROOT}lib/`.length));
}

Deno.test("layers: every lib/ module has a layer, and none imports from a layer above its own", async () => {
  const all = await modules();
  assertDeep(all.filter((m) => !layerOf.has(m)), [], "modules without a layer");
  const upward: string[] = [];
  let edges = 0;
  for (const m of all) {
    for (const dep of await importsOf(m)) {
      edges++;
      if (layerOf.get(dep)! > layerOf.get(m)!) upward.push(`${m} -> ${dep}`);
    }
  }
  assert(edges > 50, `only ${edges} imports found: the scan is broken`);
  assertDeep(upward, []);
});
