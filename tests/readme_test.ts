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
