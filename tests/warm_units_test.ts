/**
 * Warm swaps as config and units (docs/warm-swaps.md): `sleep:` is refused where lychd cannot
 * keep its promise (an engine without sleep routes, no gate, ports taken), and an engine that
 * sleeps gets vLLM's flags, a port of its own, and no Conflicts= with the other engines that
 * sleep; every other pair still conflicts. The units pass the real Quadlet generator and
 * systemd-analyze verify, and the harvester scrapes every port.
 */
import { resolveConfig } from "../lib/config/load.ts";
import { resolveEngines } from "../lib/units/model.ts";
import { assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
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
import { parse as parseYaml } from "yaml";

const FILE = "/home/ada/.config/lychd/lychd.yaml";
const ignore = requireTools("quadlet", "systemdAnalyze", "podman");

const WARM = `engines: [vllm, alpha, llama]
cartridges:
  vllm: {sleep: 1}
  alpha:
    image: docker.io/vllm/vllm-openai:v0.33.0
    port: 8000
    sleep: 2
    sleep_api: vllm
    args: [org/alpha, --port, "8000"]
`;

Deno.test("sleep: refused with its key where lychd cannot sleep the engine or route to it", () => {
  assertMatch(
    problems("engines: [llama]\ncartridges: {llama: {sleep: 1}}\n"),
    /lychd\.yaml:2:\d+: cartridges\.llama\.sleep: llama\.cpp cannot be put to sleep by lychd: llama\.cpp has no sleep or wake route/,
  );
  assertMatch(
    problems("engines: [sglang]\ncartridges: {sglang: {sleep: 2}}\n"),
    /cartridges\.sglang\.sleep: level 2 is not offered: SGLang resumes its weights only from the host copy it keeps at level 1 \(use sleep: 1\)/,
  );
  assertMatch(
    problems("engines: [x]\ncartridges: {x: {image: a/b:1, port: 80, sleep: 1, sleep_api: tgi}}\n"),
    /cartridges\.x\.sleep_api: expected vllm .* or sglang .*, got string "tgi"/,
  );
  assertMatch(
    problems("engines: [x]\ncartridges: {x: {image: a/b:1, port: 80, sleep: 1}}\n"),
    /cartridges\.x\.sleep: custom engine "x" needs sleep_api: vllm/,
  );
  assertMatch(
    problems("engines: [vllm]\ngate: false\ncartridges: {vllm: {sleep: 1}}\n"),
    /cartridges\.vllm\.sleep: needs the gate \(gate: true\)/,
  );
  assertMatch(
    problems("engines: [vllm]\ncartridges: {vllm: {sleep: 3}}\n"),
    /cartridges\.vllm\.sleep: expected 1 \(weights kept in host RAM\), 2 \(weights dropped\) or false, got number 3/,
  );
  assertMatch(
    problems("engines: [vllm]\ncartridges: {vllm: {sleep_api: vllm}}\n"),
    /cartridges\.vllm\.sleep_api: is fixed for the built-in engine "vllm"/,
  );
  assertMatch(
    problems("engines: [vllm]\ngate: {engine_port: 8080}\ncartridges: {vllm: {sleep: 1}}\n"),
    /gate\.engine_port: 8080: the 1 engines that sleep take the ports after it, up to 8081, which includes 8081/,
  );
  assertMatch(
    problems("engines: [vllm]\ngate: {max_asleep: -1}\n"),
    /gate\.max_asleep: -1 is not a number of engines asleep \(0-64\)/,
  );
  assertMatch(
    problems("engines: [vllm]\ncartridges: {vllm: {sleep: 1, env: {VLLM_SERVER_DEV_MODE: '0'}}}\n"),
    /lychd\.yaml:2:\d+: cartridges\.vllm\.env\.VLLM_SERVER_DEV_MODE: lychd sets VLLM_SERVER_DEV_MODE=1 for an engine that sleeps/,
  );
  // The value lychd sets anyway is no conflict, and without sleep the key is the user's.
  resolveConfig(
    "engines: [vllm]\ncartridges: {vllm: {sleep: 1, env: {VLLM_SERVER_DEV_MODE: '1'}}}\n",
    FILE,
    [],
  );
  resolveConfig(
    "engines: [vllm]\ncartridges: {vllm: {env: {VLLM_SERVER_DEV_MODE: '0'}}}\n",
    FILE,
    [],
  );
  assertEquals(resolveConfig(null, FILE, []).config.gate.maxAsleep, 2);
  // sleep: false is today's engine, as is no key at all.
  const { config } = resolveConfig(
    "engines: [vllm]\ncartridges: {vllm: {sleep: false}}\n",
    FILE,
    [],
  );
  assertEquals(resolveEngines(config)[0].sleep, null);
});

Deno.test("engines that sleep: a port each, vLLM's flags, no Conflicts= among them", () => {
  const { config } = resolveConfig(WARM, FILE, []);
  const engines = resolveEngines(config);
  assertDeep(engines.map((e) => [e.name, e.hostPort, e.sleep]), [
    ["vllm", 18082, { level: 1, api: "vllm" }],
    ["alpha", 18083, { level: 2, api: "vllm" }],
    ["llama", 18081, null],
  ]);
  const units = unitFiles(planFor(WARM));
  const values = (name: string, key: string, section = "Unit") =>
    unitValues(units[`soulstone-${name}.container`], section, key);
  assertDeep(values("vllm", "Conflicts"), ["soulstone-llama.service"]);
  assertDeep(values("alpha", "Conflicts"), ["soulstone-llama.service"]);
  assertDeep(values("llama", "Conflicts"), ["soulstone-alpha.service soulstone-vllm.service"]);
  assertDeep(values("vllm", "PublishPort", "Container"), ["127.0.0.1:18082:8000"]);
  assertDeep(values("alpha", "PublishPort", "Container"), ["127.0.0.1:18083:8000"]);
  assertDeep(values("llama", "PublishPort", "Container"), ["127.0.0.1:18081:8080"]);
  for (const e of ["vllm", "alpha"]) {
    assertEquals(values(e, "Environment", "Container").includes("VLLM_SERVER_DEV_MODE=1"), true);
  }
  // The custom engine's own command line first (vLLM's model is its first word), then the flag.
  assertDeep(values("alpha", "Exec", "Container"), ["org/alpha --port 8000 --enable-sleep-mode"]);
  assertEquals(values("llama", "Exec", "Container")[0].includes("sleep"), false);
});

Deno.test({
  name:
    "engines that sleep: the units pass Quadlet and systemd-analyze; the harvester scrapes each port",
  ignore,
  async fn() {
    for (const mode of ["user", "system"] as const) {
      const plan = planFor(WARM, [], mode);
      const q = await quadlet(unitFiles(plan), mode);
      assertEquals(q.stderr, "");
      const argv = execStartArgv(
        unitValues(q.services["soulstone-alpha.service"], "Service", "ExecStart")[0],
      );
      assertEquals(argv.at(-1), "--enable-sleep-mode");
      // Asleep, no restart by systemd after a crash (docs/warm-swaps.md, "A crash while asleep").
      const condition = (s: string) =>
        unitValues(q.services[`soulstone-${s}.service`], "Service", "ExecCondition");
      assertDeep(condition("alpha"), ['/usr/bin/test -z "${LYCHD_ASLEEP_ALPHA}"']);
      assertDeep(condition("vllm"), ['/usr/bin/test -z "${LYCHD_ASLEEP_VLLM}"']);
      assertDeep(condition("llama"), []);
      assertEquals(argv[argv.indexOf("--publish") + 1], "127.0.0.1:18083:8000");
      assertEquals(await systemdVerify(q.services, mode), "", `${mode}: systemd-analyze verify`);
      const prom = parseYaml(
        plan.files.find((f) => f.path === "prometheus/prometheus.yml")!.content,
      );
      const soulstone = prom.scrape_configs.find((j: { job_name: string }) =>
        j.job_name === "soulstone"
      );
      assertDeep(soulstone.static_configs[0].targets, [
        "127.0.0.1:18082",
        "127.0.0.1:18083",
        "127.0.0.1:18081",
      ]);
    }
  },
});

Deno.test("SGLang that sleeps: the memory saver and its CPU copy of the weights, a port of its own", () => {
  const yaml =
    "engines: [vllm, sglang, llama]\ncartridges:\n  vllm: {sleep: 1}\n  sglang: {sleep: 1}\n";
  const { config } = resolveConfig(yaml, FILE, []);
  assertDeep(resolveEngines(config).map((e) => [e.name, e.hostPort, e.sleep]), [
    ["vllm", 18082, { level: 1, api: "vllm" }],
    ["sglang", 18083, { level: 1, api: "sglang" }],
    ["llama", 18081, null],
  ]);
  const units = unitFiles(planFor(yaml));
  const sglang = units["soulstone-sglang.container"];
  const exec = unitValues(sglang, "Container", "Exec")[0].split(" ");
  assertDeep(exec.slice(-2), ["--enable-memory-saver", "--enable-weights-cpu-backup"]);
  assertEquals(
    unitValues(sglang, "Container", "Environment").some((e) => e.includes("DEV_MODE")),
    false,
  );
  assertDeep(unitValues(sglang, "Unit", "Conflicts"), ["soulstone-llama.service"]);
  assertDeep(unitValues(sglang, "Service", "ExecCondition"), [
    '/usr/bin/test -z "${LYCHD_ASLEEP_SGLANG}"',
  ]);
});
