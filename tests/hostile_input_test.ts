/**
 * Hostile and broken input at every entry point (flags and lychd.yaml): each case is either
 * rejected with a specific message that names the input, leaving every file byte for byte as it
 * was, or accepted, and then the REAL Quadlet generator must turn it into exactly the intended
 * podman arguments, with no extra key or line in the unit. The last test reports the counts.
 */
import { builtinCartridge } from "../lib/engines.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { type Sandbox, sandbox } from "./support/cli.ts";
import { execStartArgv } from "./support/systemd_exec.ts";
import { requireTools } from "./support/tools.ts";
import { quadlet, unitValues } from "./support/units.ts";

type Input = { flags: string[] } | { yaml: string | Uint8Array; flags?: string[] };

interface Rejected {
  name: string;
  input: Input;
  /** The message must match: it names the input and says what was expected. */
  error: RegExp;
}

interface Accepted {
  name: string;
  input: Input;
  engine: string;
  /** The engine's exact argv after the image. */
  argv?: string[];
  /** Exactly these --env values (NAME=value). */
  env?: string[];
  devices?: string[];
}

const LONG = "x".repeat(600);
const y = (yaml: string | Uint8Array): Input => ({ yaml });
const f = (...flags: string[]): Input => ({ flags });

const REJECTED: Rejected[] = [
  // Flags.
  {
    name: "model with a newline",
    input: f("--model", "vllm=org/m\nExecStartPre=/bin/sh"),
    error: /--model vllm=\.\.\.: cartridges\.vllm\.model: contains the control character "\\n"/,
  },
  {
    name: "model with a carriage return",
    input: f("--model", "vllm=org/m\rX"),
    error: /cartridges\.vllm\.model: contains the control character "\\r"/,
  },
  {
    name: "model with a tab",
    input: f("--model", "vllm=org/m\tX"),
    error: /contains the control character "\\t"/,
  },
  {
    name: "model with an escape character",
    input: f("--model", "vllm=org/\x1b[31m"),
    error: /contains the control character "\\u001b"/,
  },
  {
    name: "model that is an option (podman/engine option injection)",
    input: f("--model", "vllm=--trust-remote-code"),
    error: /starts with "-": it would be read as an option/,
  },
  {
    name: "empty model",
    input: f("--model", "vllm="),
    error: /cartridges\.vllm\.model: must not be empty/,
  },
  {
    name: "over-long model",
    input: f("--model", `vllm=${LONG}`),
    error: /is 600 characters long; at most 512/,
  },
  {
    name: "unpinned image",
    input: f("--image", "vllm=docker.io/vllm/vllm-openai:latest"),
    error: /is not pinned: give a version tag or a digest/,
  },
  {
    name: "image without a tag",
    input: f("--image", "vllm=docker.io/vllm/vllm-openai"),
    error: /is not pinned/,
  },
  {
    name: "short image name",
    input: f("--image", "vllm=vllm/vllm-openai:v1"),
    error: /must name its registry/,
  },
  {
    name: "image that is an option",
    input: f("--image", "vllm=--privileged"),
    error: /"--privileged" is not an image reference/,
  },
  {
    name: "image with a space and an option",
    input: f("--image", "vllm=docker.io/a/b:1 --privileged"),
    error: /is not an image reference/,
  },
  {
    name: "image with a newline",
    input: f("--image", "vllm=docker.io/a/b:1\nExec=/bin/sh"),
    error: /contains the control character "\\n"/,
  },
  {
    name: "image with a % specifier",
    input: f("--image", "vllm=docker.io/a/b:%h"),
    error: /is not an image reference/,
  },
  {
    name: "duplicate engines",
    input: f("--engines", "vllm,llama,vllm"),
    error: /engines\.2: "vllm" is listed twice/,
  },
  { name: "empty engine list", input: f("--engines", ""), error: /engine name "" is not allowed/ },
  {
    name: "engine name with path traversal",
    input: f("--engines", "../etc"),
    error: /engine name "\.\.\/etc" is not allowed/,
  },
  {
    name: "engine name in upper case",
    input: f("--engines", "VLLM"),
    error: /engine name "VLLM" is not allowed/,
  },
  {
    name: "engine name starting with a dash",
    input: f("--engines", "vllm,-x"),
    error: /engine name "-x" is not allowed/,
  },
  {
    name: "over-long engine name",
    input: f("--engines", `e${"a".repeat(40)}`),
    error: /at most 32 characters/,
  },
  { name: "unknown engine", input: f("--engines", "tgi"), error: /unknown engine "tgi"/ },
  {
    name: "engine via --model with traversal",
    input: f("--model", "../x=foo"),
    error: /cartridges\.\.\.\/x: engine name "\.\.\/x" is not allowed/,
  },
  {
    name: "local model path with ..",
    input: f("--model", "llama=/models/../etc/x.gguf"),
    error:
      /cartridges\.llama\.model: a local model file's path must not contain "\." or "\.\." parts/,
  },
  {
    name: "local model path with a % specifier",
    input: f("--model", "llama=/models/%h.gguf"),
    error: /cartridges\.llama\.model: a local model file's path must be an absolute path/,
  },
  {
    name: "GPU with a shell metacharacter",
    input: f("--gpu", "nvidia:0;rm -rf /"),
    error: /is not a list of distinct GPU indexes/,
  },
  {
    name: "negative GPU index",
    input: f("--gpu", "nvidia:-1"),
    error: /is not a list of distinct GPU indexes/,
  },
  {
    name: "duplicate GPU index",
    input: f("--gpu", "nvidia:0,0"),
    error: /is not a list of distinct GPU indexes/,
  },
  {
    name: "GPU indexes for AMD",
    input: f("--gpu", "amd:0"),
    error: /GPU indexes can only be chosen for nvidia/,
  },
  { name: "unknown GPU vendor", input: f("--gpu", "tpu"), error: /"tpu" is not a GPU choice/ },
  {
    name: "relative model cache",
    input: f("--model-cache", "models"),
    error: /--model-cache: model_cache: "models" must be an absolute path/,
  },
  {
    name: "model cache with ..",
    input: f("--model-cache", "/srv/../etc"),
    error: /"\/srv\/\.\.\/etc" must not contain "\." or "\.\." parts/,
  },
  {
    name: "model cache with a space",
    input: f("--model-cache", "/srv/my models"),
    error: /"\/srv\/my models" must be an absolute path/,
  },
  {
    name: "model cache with a % specifier",
    input: f("--model-cache", "/srv/%h"),
    error: /"\/srv\/%h" must be an absolute path/,
  },
  {
    name: "model cache with $",
    input: f("--model-cache", "/srv/$HOME"),
    error: /"\/srv\/\$HOME" must be an absolute path/,
  },
  {
    name: "model cache with a colon (volume option injection)",
    input: f("--model-cache", "/srv:/etc:rw"),
    error: /must be an absolute path/,
  },
  {
    name: "secret name with a space",
    input: f("--hf-token-secret", "my token"),
    error: /secrets\.HF_TOKEN: "my token" is not a Podman secret name/,
  },
  {
    name: "secret name with a comma (Secret= option injection)",
    input: f("--hf-token-secret", "tok,type=mount,target=/etc/passwd"),
    error: /is not a Podman secret name/,
  },
  {
    name: "active engine not configured",
    input: f("--active", "tgi"),
    error: /active: "tgi" is not one of engines/,
  },
  {
    name: "misspelled flag",
    input: f("--modle", "vllm=x"),
    error: /unknown option --modle \(did you mean "--model"\?\)/,
  },
  { name: "flag value missing", input: f("--gpu"), error: /--gpu needs a value/ },
  {
    name: "ENGINE=VALUE without engine",
    input: f("--model", "=x"),
    error: /--model takes ENGINE=VALUE/,
  },
  // lychd.yaml.
  {
    name: "NUL byte in the file",
    input: y("gpu: cpu\0\n"),
    error: /lychd\.yaml: \(file\): contains a NUL byte/,
  },
  {
    name: "non-UTF-8 bytes",
    input: y(new Uint8Array([0x67, 0x70, 0x75, 0x3a, 0x20, 0xff, 0xfe, 0x0a])),
    error: /lychd\.yaml: \(file\): is not valid UTF-8/,
  },
  { name: "YAML alias bomb", input: y(bomb()), error: /\(yaml\): Excessive alias count/ },
  {
    name: "duplicate keys",
    input: y("gpu: cpu\ngpu: nvidia\n"),
    error: /lychd\.yaml:2:1: \(yaml\): Map keys must be unique/,
  },
  {
    name: "malformed YAML (bad indentation)",
    input: y("cartridges:\n  vllm:\n      model: a\n    image: b\n"),
    error: /lychd\.yaml:\d+:\d+: \(yaml\)/,
  },
  {
    name: "top level is a list",
    input: y("- vllm\n- llama\n"),
    error: /\(top level\): expected a mapping \(key: value\), got a list/,
  },
  {
    name: "engines as a string",
    input: y("engines: vllm\n"),
    error: /lychd\.yaml:1:10: engines: expected a non-empty list/,
  },
  {
    name: "empty engines list",
    input: y("engines: []\n"),
    error: /engines: expected a non-empty list/,
  },
  {
    name: "args not a list",
    input: y("cartridges:\n  vllm:\n    args: --x\n"),
    error: /cartridges\.vllm\.args: expected a list of arguments/,
  },
  {
    name: "over-long argument",
    input: y(`cartridges:\n  vllm:\n    args: ["${"a".repeat(5000)}"]\n`),
    error: /cartridges\.vllm\.args\.0: is 5000 characters long/,
  },
  {
    name: "argument with a newline",
    input: y('cartridges:\n  vllm:\n    args: ["--x\\nExecStartPost=/bin/sh"]\n'),
    error: /cartridges\.vllm\.args\.0: contains the control character "\\n"/,
  },
  {
    name: "env value with a newline",
    input: y('cartridges:\n  vllm:\n    env: {A: "x\\n[Service]"}\n'),
    error: /cartridges\.vllm\.env\.A: contains the control character "\\n"/,
  },
  {
    name: "env name that is not a name",
    input: y("cartridges:\n  vllm:\n    env: {A-B: x}\n"),
    error: /cartridges\.vllm\.env\.A-B: is not a valid environment variable name/,
  },
  {
    name: "env name with = (injection into --env)",
    input: y("cartridges:\n  vllm:\n    env: {'A=B': x}\n"),
    error: /is not a valid environment variable name/,
  },
  {
    name: "a secret as a plain env value",
    input: y("cartridges:\n  vllm:\n    env: {HF_TOKEN: hf_secret}\n"),
    error: /env\.HF_TOKEN: looks like a secret/,
  },
  {
    name: "unknown key, with a suggestion",
    input: y("cartridges:\n  vllm:\n    modle: x\n"),
    error: /lychd\.yaml:3:5: cartridges\.vllm\.modle: unknown key \(did you mean "model"\?\)/,
  },
  {
    name: "port 0",
    input: y("engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: 0}\n"),
    error: /cartridges\.t\.port: 0 is not a port number/,
  },
  {
    name: "port 65536",
    input: y("engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: 65536}\n"),
    error: /cartridges\.t\.port: 65536 is not a port number/,
  },
  {
    name: "port as a string",
    input: y('engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: "8080"}\n'),
    error: /cartridges\.t\.port: "8080" is not a port number/,
  },
  {
    name: "custom engine without image",
    input: y("engines: [t]\ncartridges:\n  t: {port: 5000}\n"),
    error: /cartridges\.t\.image: custom engine "t" needs an image/,
  },
  {
    name: "health path without a slash",
    input: y(
      "engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: 5, health_path: health}\n",
    ),
    error: /health_path: "health" is not a URL path/,
  },
  {
    name: "health path with shell characters",
    input: y(
      "engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: 5, health_path: '/h?x=$(id)'}\n",
    ),
    error: /is not a URL path/,
  },
  {
    name: "zero start timeout",
    input: y("cartridges:\n  vllm: {start_timeout: 0s}\n"),
    error: /start_timeout: "0s" is not a duration between 1s and 24h/,
  },
  {
    name: "start timeout that is not a duration",
    input: y("cartridges:\n  vllm: {start_timeout: forever}\n"),
    error: /"forever" is not a duration/,
  },
  {
    name: "start timeout over 24 h",
    input: y("cartridges:\n  vllm: {start_timeout: 90000}\n"),
    error: /90000 is not a duration between 1s and 24h/,
  },
  {
    name: "model with a leading dash in the file",
    input: y("cartridges:\n  llama: {model: -hf}\n"),
    error: /cartridges\.llama\.model: "-hf" starts with "-"/,
  },
  {
    name: "scrape interval with a space",
    input: y("harvester: {scrape_interval: 5 s}\n"),
    error: /harvester\.scrape_interval: "5 s" is not a Prometheus duration/,
  },
  {
    name: "built-in engine's port",
    input: y("cartridges:\n  vllm: {port: 9000}\n"),
    error: /cartridges\.vllm\.port: is fixed for the built-in engine "vllm"/,
  },
];

function bomb(): string {
  let s = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n';
  for (const [p, q] of [["b", "a"], ["c", "b"], ["d", "c"], ["e", "d"], ["f", "e"], ["g", "f"]]) {
    s += `${p}: &${p} [*${q},*${q},*${q},*${q},*${q},*${q},*${q},*${q},*${q}]\n`;
  }
  return s + "engines: *g\n";
}

const VLLM_TAIL = ["--host", "0.0.0.0", "--port", "8000"];
const ACCEPTED: Accepted[] = [
  {
    name: "model with %, $, spaces, quotes and a backslash",
    input: f("--model", `vllm=org/m %n $X "q" 'x' back\\slash`),
    engine: "vllm",
    argv: [`org/m %n $X "q" 'x' back\\slash`, ...VLLM_TAIL],
  },
  {
    name: "args that look like templates and specifiers",
    input: y(
      'engines: [vllm]\ncartridges:\n  vllm:\n    args: ["--chat-template", "{% if x %}{{ $y }}%%{% endif %}", "${HOME}", "%t"]\n',
    ),
    engine: "vllm",
    argv: [
      "Qwen/Qwen2.5-7B-Instruct",
      ...VLLM_TAIL,
      "--chat-template",
      "{% if x %}{{ $y }}%%{% endif %}",
      "${HOME}",
      "%t",
    ],
  },
  {
    name: "env values with quotes, %, $, = and spaces",
    input: y(
      `engines: [vllm]\ncartridges:\n  vllm:\n    env:\n      PREFIX: 'say "hi" to 100% of $USERS = all'\n      EMPTYISH: " "\n`,
    ),
    engine: "vllm",
    env: ['PREFIX=say "hi" to 100% of $USERS = all', "EMPTYISH= "],
  },
  {
    name: "a local GGUF whose file name has a space",
    input: f("--engines", "llama", "--model", "llama=/models/my model.gguf"),
    engine: "llama",
    argv: [
      "-m",
      "/models/my model.gguf",
      "--alias",
      "/models/my model.gguf",
      "--host",
      "0.0.0.0",
      "--port",
      "8080",
      "--metrics",
    ],
  },
  {
    name: "a Unicode model name",
    input: f("--model", "vllm=org/modèle-ü"),
    engine: "vllm",
    argv: ["org/modèle-ü", ...VLLM_TAIL],
  },
  {
    name: "only one engine",
    input: f("--engines", "sglang"),
    engine: "sglang",
  },
  {
    name: "engine flags with leading dashes in args",
    input: y(
      'engines: [vllm]\ncartridges:\n  vllm: {args: ["--max-model-len", "8192", "-tp", "2"]}\n',
    ),
    engine: "vllm",
    argv: ["Qwen/Qwen2.5-7B-Instruct", ...VLLM_TAIL, "--max-model-len", "8192", "-tp", "2"],
  },
  {
    name: "a custom engine on port 65535",
    input: y(
      "engines: [t]\ncartridges:\n  t: {image: docker.io/a/b:1, port: 65535, args: [serve]}\n",
    ),
    engine: "t",
    argv: ["serve"],
  },
  {
    name: "chosen GPUs",
    input: f("--gpu", "nvidia:0,1"),
    engine: "vllm",
    devices: ["nvidia.com/gpu=0", "nvidia.com/gpu=1"],
  },
];

/** Every key a soulstone unit may contain: anything else got in through the input. */
const ALLOWED_LINE =
  /^(#.*|\[(Unit|Container|Service|Install)\]|(Description|Conflicts|After|ContainerName|Image|PublishPort|AddDevice|Volume|Environment|Secret|PodmanArgs|Exec|TimeoutStartSec|TimeoutStopSec|Restart|RestartSec|WantedBy)=.*|)$/;

async function give(sb: Sandbox, input: Input, command: string[]) {
  if ("yaml" in input) {
    await Deno.mkdir(`${sb.home}/.config/lychd`, { recursive: true });
    const path = `${sb.home}/.config/lychd/lychd.yaml`;
    if (typeof input.yaml === "string") await Deno.writeTextFile(path, input.yaml);
    else await Deno.writeFile(path, input.yaml);
  }
  return await sb.run([...command, ...(("flags" in input && input.flags) || [])]);
}

async function treeHash(sb: Sandbox): Promise<string> {
  const files: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`;
      if (p === sb.bin) continue;
      if (e.isDirectory) await walk(p);
      else files.push(`${p}\0${btoa(String.fromCharCode(...await Deno.readFile(p)))}`);
    }
  };
  await walk(sb.home);
  const d = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(files.sort().join("\n")),
  );
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

const tally = { accepted: 0, rejected: 0, wrong: 0 };

for (const c of REJECTED) {
  Deno.test(`hostile input rejected: ${c.name}`, async () => {
    const sb = await sandbox();
    try {
      // A working install first: the bad input must leave all of it exactly as it was.
      assertEquals((await sb.run(["init", "--engines", "vllm,llama"])).code, 0);
      if ("yaml" in c.input) {
        await Deno.writeFile(
          `${sb.home}/.config/lychd/lychd.yaml`,
          typeof c.input.yaml === "string" ? new TextEncoder().encode(c.input.yaml) : c.input.yaml,
        );
      }
      const before = await treeHash(sb);
      const r = await sb.run(["init", ...(("flags" in c.input && c.input.flags) || [])]);
      const ok = r.code === 2 && c.error.test(r.stderr) && (await treeHash(sb)) === before;
      if (!ok) tally.wrong++;
      else tally.rejected++;
      assertEquals(r.code, 2, r.stdout + r.stderr);
      assertMatch(r.stderr, c.error);
      assertEquals(await treeHash(sb), before, "a file changed");
    } finally {
      await sb.cleanup();
    }
  });
}

const ignore = requireTools("quadlet");
for (const c of ACCEPTED) {
  Deno.test({
    name: `legal special input passes through exactly: ${c.name}`,
    ignore,
    async fn() {
      const sb = await sandbox();
      try {
        const r = await give(sb, c.input, [
          "render",
          "--out",
          `${sb.home}/out`,
          "--system",
          "--config",
          `${sb.home}/.config/lychd/lychd.yaml`,
        ]);
        assertEquals(r.code, 0, r.stderr);
        const units: Record<string, string> = {};
        for await (const e of Deno.readDir(`${sb.home}/out/quadlet`)) {
          units[e.name] = await Deno.readTextFile(`${sb.home}/out/quadlet/${e.name}`);
        }
        const unit = units[`soulstone-${c.engine}.container`];
        for (const line of unit.split("\n")) {
          assert(ALLOWED_LINE.test(line), `unexpected line in the unit: ${line}`);
        }
        const q = await quadlet(units, "system");
        assertEquals(q.stderr, "");
        const argv = execStartArgv(
          unitValues(q.services[`soulstone-${c.engine}.service`], "Service", "ExecStart")[0],
        );
        const image = unitValues(unit, "Container", "Image")[0];
        if (c.argv) assertDeep(argv.slice(argv.indexOf(image) + 1), c.argv);
        const pick = (flag: string) => argv.filter((_, i) => argv[i - 1] === flag);
        // Besides the case's own values, exactly the engine's compile cache variables.
        const cacheEnv = Object.entries(builtinCartridge(c.engine)?.compileCaches ?? {})
          .map(([name, sub]) => `${name}=/lychd/cache/${sub}`);
        if (c.env) assertDeep(pick("--env").sort(), [...c.env, ...cacheEnv].sort());
        if (c.devices) assertDeep(pick("--device"), c.devices);
        tally.accepted++;
      } catch (e) {
        tally.wrong++;
        throw e;
      } finally {
        await sb.cleanup();
      }
    },
  });
}

Deno.test("hostile input: the count", () => {
  // Counted from the cases that ran to the end, not from the tables: a skipped or filtered-out
  // case shows here as missing.
  const expected = REJECTED.length + (ignore ? 0 : ACCEPTED.length);
  console.log(
    `  hostile inputs: ${tally.rejected} rejected with files unchanged, ${tally.accepted} ` +
      `accepted and passed through exactly, ${tally.wrong} got through wrongly, of ${expected} ` +
      `cases${ignore ? ` (${ACCEPTED.length} accepted cases skipped: no quadlet)` : ""}`,
  );
  assertEquals(tally.wrong, 0);
  assertEquals(tally.rejected, REJECTED.length, "rejected cases that did not run");
  assertEquals(tally.accepted, ignore ? 0 : ACCEPTED.length, "accepted cases that did not run");
  assert(
    tally.rejected + tally.accepted >= (ignore ? 40 : 60),
    "fewer cases than the suite claims",
  );
});
