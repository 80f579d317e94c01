/** The README and the help texts keep up with the CLI: every command and every flag is documented. */
import { COMMANDS } from "../lib/cli.ts";
import { HELP } from "../lib/help.ts";
import { assert } from "./support/assert.ts";

const README = await Deno.readTextFile(new URL("../README.md", import.meta.url));

Deno.test("README and --help document every command and flag of the parser", () => {
  for (const [command, spec] of Object.entries(COMMANDS)) {
    assert(README.includes(`lychd ${command}`), `README does not show \`lychd ${command}\``);
    assert(HELP[command] !== undefined, `no --help text for ${command}`);
    for (const flag of Object.keys(spec.flags)) {
      if (flag === "help") continue;
      assert(README.includes(`--${flag}`), `README does not mention ${command} --${flag}`);
      assert(
        HELP[command].includes(`--${flag}`) || HELP.init.includes(`--${flag}`),
        `lychd ${command} --help lacks --${flag}`,
      );
    }
  }
});

Deno.test("README's exit-code table is lib/exit.ts's, row for row", async () => {
  const { EXIT_TABLE } = await import("../lib/exit.ts");
  const section = README.slice(README.indexOf("## Exit codes"), README.indexOf("## Configuration"));
  const rows = [...section.matchAll(/^\| (\d+) +\| `([A-Z_]+)` +\|/gm)].map((
    m,
  ) => [Number(m[1]), m[2]]);
  assert(
    JSON.stringify(rows) === JSON.stringify(EXIT_TABLE.map(([code, name]) => [code, name])),
    `README ${JSON.stringify(rows)} vs lib/exit.ts`,
  );
});

Deno.test("README's permission table is deno.json's default set, entry for entry", async () => {
  const denoJson = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  );
  const set = denoJson.permissions.default;
  const section = README.slice(
    README.indexOf("## Permissions"),
    README.indexOf("## Troubleshooting"),
  );
  // Each row: its permission names, and the `values` of its "allowed" cell.
  const listed = new Map<string, Set<string>>();
  for (const m of section.matchAll(/^\| ([a-z, ]+?) +\| ([^|]*)\|/gm)) {
    const values = [...m[2].matchAll(/`([^`]+)`/g)].map((v) => v[1]);
    for (const name of m[1].split(",").map((n) => n.trim())) {
      listed.set(name, new Set([...(listed.get(name) ?? []), ...values]));
    }
  }
  const expected: Record<string, string[]> = {
    read: set.read,
    write: set.write,
    run: set.run,
    net: set.net,
    env: set.env.allow,
    sys: set.sys,
  };
  for (const [name, values] of Object.entries(expected)) {
    assert(
      JSON.stringify([...(listed.get(name) ?? [])].sort()) === JSON.stringify([...values].sort()),
      `README's ${name}: ${JSON.stringify([...(listed.get(name) ?? [])])}, deno.json: ${
        JSON.stringify(values)
      }`,
    );
  }
  assert(set.ffi === false && set.import === false && listed.has("ffi"), "ffi and import: none");
});
