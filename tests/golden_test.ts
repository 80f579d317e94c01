/**
 * Golden files: the exact bytes of the rendered units and config, so that any change to the
 * output shows up in review. They prove stability only; correctness is proved by the real
 * validators (quadlet_test.ts, prometheus_test.ts). Rewrite them with `deno task golden`.
 */
import { assertEquals } from "./support/assert.ts";
import { planFor } from "./support/units.ts";

const DIR = new URL("./golden/", import.meta.url).pathname;
const UPDATE = Deno.env.get("UPDATE_GOLDEN") === "1";

const CASES = {
  "default-user": () => planFor(null, [], "user"),
  "custom-system": () =>
    planFor(
      `engines: [llama, tabby]
gpu: nvidia:1
secrets: {HF_TOKEN: lychd-hf-token}
cartridges:
  llama:
    model: /models/q.gguf
    args: ["--ctx-size", "8192", "--chat-template", "100% {{ $x }}"]
  tabby:
    image: ghcr.io/theroyallab/tabbyapi:v0.9.0
    port: 5000
    args: [python3, main.py]
`,
      [],
      "system",
    ),
};

for (const [name, build] of Object.entries(CASES)) {
  Deno.test(`golden: ${name}`, async () => {
    const plan = build();
    for (const file of plan.files) {
      if (file.path.endsWith(".json") || file.path.endsWith(".rules.yml")) continue; // own tests
      const golden = `${DIR}${name}/${file.root}/${file.path.replaceAll("/", "__")}`;
      if (UPDATE) {
        await Deno.mkdir(golden.slice(0, golden.lastIndexOf("/")), { recursive: true });
        await Deno.writeTextFile(golden, file.content);
        continue;
      }
      const expected = await Deno.readTextFile(golden).catch(() => `(no golden file ${golden})`);
      assertEquals(file.content, expected, `${file.root}/${file.path} differs from ${golden}`);
    }
  });
}
