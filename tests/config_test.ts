/** lychd.yaml and flags: every class of bad input gets a specific, located message. */
import { resolveConfig } from "../lib/config/load.ts";
import { imageProblem, parseDuration } from "../lib/config/validate.ts";
import { type Override, updateConfigText } from "../lib/config/yaml.ts";
import { locations } from "../lib/paths.ts";
import { engineUnits } from "../lib/units/model.ts";
import { assert, assertDeep, assertEquals, assertMatch, assertThrows } from "./support/assert.ts";
import { sandbox } from "./support/cli.ts";
import { configProblems as problems } from "./support/units.ts";

const FILE = "/home/ada/.config/lychd/lychd.yaml";

const flag = (path: string[], value: unknown, name: string): Override => ({
  path,
  value,
  flag: name,
});

Deno.test("config: defaults when there is no file", () => {
  const { config, configText } = resolveConfig(null, FILE, []);
  assertDeep(config.engines, ["vllm", "sglang", "llama"]);
  assertEquals(config.active, "vllm");
  assertDeep(config.gpu, { vendor: "nvidia", devices: [] });
  assertMatch(configText, /^# lychd configuration/);
  assertMatch(configText, /^active: vllm$/m);
});

const BAD: [string, string | null, Override[], RegExp][] = [
  [
    "malformed YAML, with line and column",
    "engines: [vllm\ngpu: nvidia\n",
    [],
    /lychd\.yaml:\d+:\d+: \(yaml\): /,
  ],
  [
    "duplicate keys",
    "gpu: cpu\ngpu: amd\n",
    [],
    /lychd\.yaml:2:1: \(yaml\): Map keys must be unique/,
  ],
  [
    "a misspelled key, with a suggestion",
    "engines: [vllm]\ncartridges:\n  vllm:\n    modle: x\n",
    [],
    /lychd\.yaml:4:5: cartridges\.vllm\.modle: unknown key \(did you mean "model"\?\)/,
  ],
  [
    "an unknown top-level key",
    "enignes: [vllm]\n",
    [],
    /lychd\.yaml:1:1: enignes: unknown key \(did you mean "engines"\?\)/,
  ],
  ["a wrong type", "engines: vllm\n", [], /lychd\.yaml:1:10: engines: expected a non-empty list/],
  [
    "args not a list",
    "cartridges:\n  vllm:\n    args: --x\n",
    [],
    /lychd\.yaml:3:11: cartridges\.vllm\.args: expected a list/,
  ],
  [
    "an unknown engine, with a suggestion",
    null,
    [flag(["engines"], ["vllm", "sglnag"], "--engines")],
    /--engines: engines\.1: unknown engine "sglnag" \(did you mean "sglang"\?\)/,
  ],
  [
    "an engine listed twice",
    "engines: [vllm, llama, vllm]\n",
    [],
    /lychd\.yaml:1:24: engines\.2: "vllm" is listed twice/,
  ],
  [
    "an unsafe engine name (path traversal)",
    "engines: [vllm]\ncartridges:\n  ../evil:\n    image: docker.io/x/y:1\n    port: 1\n",
    [],
    /cartridges\.\.\.\/evil: engine name "\.\.\/evil" is not allowed/,
  ],
  [
    "an engine name with upper case",
    null,
    [flag(["engines"], ["VLLM"], "--engines")],
    /engine name "VLLM" is not allowed: use lowercase letters/,
  ],
  [
    "a model with a newline (unit-file injection)",
    null,
    [flag(["cartridges", "vllm", "model"], "org/m\nExecStartPre=/bin/evil", "--model vllm=...")],
    /--model vllm=\.\.\.: cartridges\.vllm\.model: contains the control character "\\n"/,
  ],
  [
    "a model with a carriage return",
    'cartridges:\n  llama:\n    model: "a\\rb"\n',
    [],
    /lychd\.yaml:3:12: cartridges\.llama\.model: contains the control character "\\r"/,
  ],
  [
    "a model that would be read as an option",
    null,
    [flag(["cartridges", "vllm", "model"], "--trust-remote-code", "--model vllm=...")],
    /starts with "-": it would be read as an option/,
  ],
  [
    "an env value with a newline",
    'cartridges:\n  vllm:\n    env:\n      A: "x\\ny"\n',
    [],
    /cartridges\.vllm\.env\.A: contains the control character "\\n"/,
  ],
  [
    "a secret as a plain env value",
    "cartridges:\n  vllm:\n    env:\n      HF_TOKEN: hf_abc\n",
    [],
    /cartridges\.vllm\.env\.HF_TOKEN: looks like a secret: secrets never go into unit files/,
  ],
  [
    "an unpinned image",
    null,
    [flag(
      ["cartridges", "vllm", "image"],
      "docker.io/vllm/vllm-openai:latest",
      "--image vllm=...",
    )],
    /--image vllm=\.\.\.: cartridges\.vllm\.image: "docker\.io\/vllm\/vllm-openai:latest" is not pinned/,
  ],
  [
    "a short image name",
    null,
    [flag(["cartridges", "vllm", "image"], "vllm/vllm-openai:v1", "--image vllm=...")],
    /must name its registry \(e\.g\. docker\.io\/vllm\/vllm-openai:v1\)/,
  ],
  [
    "an image reference with an option in it",
    null,
    [flag(["cartridges", "vllm", "image"], "--privileged", "--image vllm=...")],
    /"--privileged" is not an image reference/,
  ],
  ["a bad GPU choice", "gpu: nvidai\n", [], /lychd\.yaml:1:6: gpu: "nvidai" is not a GPU choice/],
  ["GPU indexes for AMD", "gpu: amd:0\n", [], /GPU indexes can only be chosen for nvidia/],
  [
    "a custom engine without image and port",
    "engines: [tabby]\ncartridges:\n  tabby:\n    args: [x]\n",
    [],
    /cartridges\.tabby\.image: custom engine "tabby" needs an image[\s\S]*cartridges\.tabby\.port: custom engine "tabby" needs the port/,
  ],
  [
    "port out of range",
    "engines: [t]\ncartridges:\n  t:\n    image: docker.io/a/b:1\n    port: 65536\n",
    [],
    /lychd\.yaml:5:11: cartridges\.t\.port: 65536 is not a port number \(1-65535\)/,
  ],
  [
    "port 0",
    "engines: [t]\ncartridges:\n  t:\n    image: docker.io/a/b:1\n    port: 0\n",
    [],
    /cartridges\.t\.port: 0 is not a port number/,
  ],
  [
    "a built-in engine's fixed port",
    "cartridges:\n  vllm:\n    port: 9000\n",
    [],
    /cartridges\.vllm\.port: is fixed for the built-in engine "vllm"/,
  ],
  [
    "a bad duration",
    "cartridges:\n  vllm:\n    start_timeout: 15 minutes\n",
    [],
    /"15 minutes" is not a duration/,
  ],
  [
    "a model cache with a space or traversal",
    null,
    [flag(["model_cache"], "/srv/../etc", "--model-cache")],
    /--model-cache: model_cache: "\/srv\/\.\.\/etc" must not contain "\." or "\.\." parts/,
  ],
  [
    "a relative model cache",
    "model_cache: models\n",
    [],
    /model_cache: "models" must be an absolute path/,
  ],
  [
    "active not among engines",
    "engines: [vllm]\nactive: llama\n",
    [],
    /active: "llama" is not one of engines \(vllm\)/,
  ],
  [
    "an empty model",
    'cartridges:\n  vllm:\n    model: ""\n',
    [],
    /cartridges\.vllm\.model: must not be empty/,
  ],
  [
    "an over-long value",
    null,
    [flag(["cartridges", "vllm", "model"], "x".repeat(600), "--model vllm=...")],
    /is 600 characters long; at most 512/,
  ],
  ["an alias bomb", bomb(), [], /\(yaml\): Excessive alias count/],
  [
    "a bad secret name",
    "secrets:\n  HF_TOKEN: 'a b'\n",
    [],
    /secrets\.HF_TOKEN: "a b" is not a Podman secret name/,
  ],
  [
    "a bad metrics path",
    "engines: [t]\ncartridges:\n  t:\n    image: docker.io/a/b:1\n    port: 5\n    metrics_path: metrics\n",
    [],
    /metrics_path: "metrics" is not a URL path/,
  ],
  ["a NUL byte", "gpu: cpu\0\n", [], /contains a NUL byte/],
  [
    "SGLang has no CPU image",
    "gpu: cpu\n",
    [],
    /cartridges\.sglang\.image: SGLang publishes no cpu image/,
  ],
];

function bomb(): string {
  let y = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n';
  for (const [p, q] of [["b", "a"], ["c", "b"], ["d", "c"], ["e", "d"], ["f", "e"], ["g", "f"]]) {
    y += `${p}: &${p} [*${q},*${q},*${q},*${q},*${q},*${q},*${q},*${q},*${q}]\n`;
  }
  return y + "engines: *g\n";
}

for (const [name, yaml, overrides, expected] of BAD) {
  Deno.test(`config rejects ${name}`, () => {
    if (name === "SGLang has no CPU image") {
      // Decided when the units are built, still before anything is written.
      const { config } = resolveConfig(yaml, FILE, overrides);
      assertThrows(() => engineUnits(config, locations("user", () => "/home/ada")), expected);
      return;
    }
    assertMatch(problems(yaml, overrides), expected);
  });
}

Deno.test("config: durations", () => {
  assertEquals(parseDuration("90"), 90);
  assertEquals(parseDuration(45), 45);
  assertEquals(parseDuration("15m"), 900);
  assertEquals(parseDuration("1h30m"), 5400);
  assertEquals(parseDuration("2h5s"), 7205);
  assertEquals(parseDuration(""), null);
  assertEquals(parseDuration("5 m"), null);
});

Deno.test("config: image references", () => {
  assertEquals(imageProblem("docker.io/vllm/vllm-openai:v0.33.0"), null);
  assertEquals(imageProblem("localhost/fake-engine:1"), null);
  assertEquals(imageProblem("registry.local:5000/team/engine:2.1"), null);
  assertEquals(imageProblem(`ghcr.io/a/b@sha256:${"a".repeat(64)}`), null);
  assert(imageProblem("docker.io/vllm/vllm-openai") !== null);
  assert(imageProblem("Docker.io/x/y:1") !== null);
  assert(imageProblem("docker.io/x/y:1 --privileged") !== null);
});

Deno.test("config: every problem is reported at once", () => {
  const message = problems(
    "engines: [vllm, bogus]\ngpu: tpu\nharvester:\n  scrape_interval: fast\n",
  );
  assertMatch(message, /engines\.1: unknown engine "bogus"/);
  assertMatch(message, /gpu: "tpu" is not a GPU choice/);
  assertMatch(message, /harvester\.scrape_interval: "fast" is not a Prometheus duration/);
});

Deno.test("config: bad input through the CLI changes no file, byte for byte", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init"])).code, 0);
    const before = await sb.tree();
    for (
      const args of [
        ["init", "--model", "vllm=a\nb"],
        ["init", "--engines", "vllm,vllm"],
        ["init", "--image", "vllm=docker.io/vllm/vllm-openai:latest"],
        ["init", "--gpu", "tpu"],
        ["init", "--engines", "nope"],
      ]
    ) {
      const r = await sb.run(args);
      assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assertMatch(r.stderr, /^lychd: --/);
      assertDeep(await sb.tree(), before);
    }
    await Deno.writeTextFile(`${sb.home}/.config/lychd/lychd.yaml`, "engines: [vllm\n");
    const after = await sb.tree();
    const r = await sb.run(["init"]);
    assertEquals(r.code, 2);
    assertMatch(r.stderr, /lychd\.yaml:2:1: \(yaml\)/);
    assertDeep(await sb.tree(), after);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("config: the last override of a key wins in the file too, even when it repeats the file", () => {
  const gate = (value: boolean): Override => ({ path: ["gate"], value, flag: "--gate" });
  assertEquals(updateConfigText("gate: true\n", [gate(false), gate(true)]), "gate: true\n");
  assertMatch(updateConfigText("gate: true\n", [gate(true), gate(false)]), /^gate: false$/m);
  const text = updateConfigText(null, [gate(false), gate(true)]);
  assertEquals(resolveConfig(text, "/x/lychd.yaml", []).config.gate.enabled, true);
});
