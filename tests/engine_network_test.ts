/**
 * The engine's network (`network:`, docs/engines.md "The engine's network"): private by default,
 * listening on every address of its own network with one port published on 127.0.0.1; on the
 * host's network a built-in engine is told to listen on 127.0.0.1 at its engine port, nothing is
 * published, and its args cannot move it (a custom engine's port must be the engine port; its
 * address is its own args' business). The units go through the real Quadlet generator and
 * systemd-analyze verify.
 */
import { resolveConfig } from "../lib/config/load.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { execStartArgv } from "./support/systemd_exec.ts";
import { requireTools } from "./support/tools.ts";
import {
  configProblems as problems,
  planFor,
  quadlet,
  systemdVerify,
  unitFiles,
  unitValues,
} from "./support/units.ts";

const FILE = "/home/ada/.config/lychd/lychd.yaml";
const ignore = requireTools("quadlet", "systemdAnalyze", "podman");

/** podman's argv from the generated service: [flags..., image, engine words...]. */
async function podmanRun(yaml: string, engine: string) {
  const q = await quadlet(unitFiles(planFor(yaml)), "user");
  assertEquals(q.stderr, "");
  const service = q.services[`soulstone-${engine}.service`];
  assertEquals(await systemdVerify({ [`soulstone-${engine}.service`]: service }, "user"), "");
  const argv = execStartArgv(unitValues(service, "Service", "ExecStart")[0]);
  const flag = (name: string) => argv.flatMap((w, i) => (argv[i - 1] === name ? [w] : []));
  return { argv, flag };
}

Deno.test("network: refused with its key when it is neither host nor private", () => {
  assertMatch(
    problems("engines: [llama]\ncartridges: {llama: {network: bridge}}\n"),
    /lychd\.yaml:2:\d+: cartridges\.llama\.network: expected host .* or private .*, got string "bridge"/,
  );
});

Deno.test("network: host: a built-in's args may not set its address or port", () => {
  const out = problems(
    "engines: [llama]\ncartridges:\n  llama:\n    network: host\n" +
      '    args: [--ctx-size, "2048", --host, 0.0.0.0, --port=9000]\n',
  );
  assertMatch(
    out,
    /lychd\.yaml:5:\d+: cartridges\.llama\.args\.2: --host \(--host\): on the host's network lychd makes llama\.cpp listen on 127\.0\.0\.1:18081 .*remove it from args/,
  );
  assertMatch(out, /cartridges\.llama\.args\.4: --port=9000 \(--port\): on the host's network/);
  // vLLM's and SGLang's argparse read an abbreviation as the flag itself.
  const vllm = problems(
    "engines: [vllm, sglang]\ncartridges:\n  vllm: {network: host, args: [--hos, 0.0.0.0]}\n" +
      "  sglang: {network: host, args: [--max-running-requests, '8', --por=9000]}\n",
  );
  assertMatch(
    vllm,
    /cartridges\.vllm\.args\.0: --hos \(--host\): on the host's network lychd makes vLLM listen on 127\.0\.0\.1:18081/,
  );
  assertMatch(vllm, /cartridges\.sglang\.args\.2: --por=9000 \(--port\)/);
  assertEquals(vllm.includes("--max-running-requests"), false, vllm);
  // In a network of its own, its args are its own business (the published port decides).
  resolveConfig(
    "engines: [llama]\ncartridges: {llama: {network: private, args: [--host, 0.0.0.0]}}\n",
    FILE,
    [],
  );
});

Deno.test("network: host: a custom engine's port must be the port lychd reaches it on", () => {
  assertMatch(
    problems(
      "engines: [x]\ncartridges: {x: {image: docker.io/a/b:1, port: 8080, network: host}}\n",
    ),
    /cartridges\.x\.port: 8080: with network: host the engine listens on the host itself, where lychd reaches it: port must be 18081 \(gate\.engine_port\), and its args must bind it to 127\.0\.0\.1/,
  );
  assertMatch(
    problems(
      "engines: [x]\ngate: false\ncartridges: {x: {image: docker.io/a/b:1, port: 18081, network: host}}\n",
    ),
    /port must be 8081 \(8081 without the gate\)/,
  );
});

Deno.test({
  name: "network: host for llama.cpp: on 127.0.0.1 at the engine port, unpublished",
  ignore,
  async fn() {
    const { argv, flag } = await podmanRun(
      "engines: [llama, vllm]\ncartridges: {llama: {network: host}}\n",
      "llama",
    );
    assertDeep(flag("--network"), ["host"]);
    assertDeep(flag("--publish"), []);
    assert(argv.includes("--no-healthcheck"), "the image's HEALTHCHECK asks port 8080");
    const words = argv.join(" ");
    assertMatch(words, / --host 127\.0\.0\.1 --port 18081 --metrics$/);
    // Without the gate the engine itself holds 8081.
    const solo = await podmanRun(
      "engines: [llama]\ngate: false\ncartridges: {llama: {network: host}}\n",
      "llama",
    );
    assertMatch(solo.argv.join(" "), / --host 127\.0\.0\.1 --port 8081 --metrics$/);
  },
});

Deno.test({
  name: "private by default: a network of the engine's own, one port published on 127.0.0.1",
  ignore,
  async fn() {
    const llama = await podmanRun("engines: [llama, vllm]\n", "llama");
    assertDeep(llama.flag("--network"), []);
    assertDeep(llama.flag("--publish"), ["127.0.0.1:18081:8080"]);
    assertMatch(llama.argv.join(" "), / --host 0\.0\.0\.0 --port 8080 --metrics$/);
    const vllm = await podmanRun(
      "engines: [vllm, llama]\ncartridges: {vllm: {network: host}}\n",
      "vllm",
    );
    assertDeep(vllm.flag("--network"), ["host"]);
    assertDeep(vllm.flag("--publish"), []);
    assertMatch(vllm.argv.join(" "), / --host 127\.0\.0\.1 --port 18081$/);
    const plain = await podmanRun(
      "engines: [vllm]\ncartridges: {vllm: {network: private}}\n",
      "vllm",
    );
    assertDeep(plain.flag("--publish"), ["127.0.0.1:18081:8000"]);
  },
});

Deno.test({
  name: "network: host for a custom engine: its own command line, on the host's network",
  ignore,
  async fn() {
    const { argv, flag } = await podmanRun(
      `engines: [x, llama]
cartridges:
  x:
    image: docker.io/a/b:1
    port: 18081
    network: host
    args: [serve, --bind, "127.0.0.1:18081"]
`,
      "x",
    );
    assertDeep(flag("--network"), ["host"]);
    assertDeep(flag("--publish"), []);
    assertDeep(argv.slice(argv.indexOf("docker.io/a/b:1") + 1), [
      "serve",
      "--bind",
      "127.0.0.1:18081",
    ]);
  },
});
