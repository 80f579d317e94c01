/**
 * Crash safety, by deterministic fault injection: an `init` that changes every file is made to
 * fail at each of its write steps in turn. After every crash each file must be the complete old
 * or the complete new version, all recognised by the manifest, and the next `init` must finish.
 */
import { init } from "../lib/commands/init.ts";
import type { Override } from "../lib/config/yaml.ts";
import { sha256 } from "../lib/apply.ts";
import { assert, assertDeep, assertEquals, assertRejects } from "./support/assert.ts";
import { FakeHost } from "./support/fake_host.ts";

const MANIFEST = "/home/ada/.local/share/lychd/manifest.json";

function options(overrides: Override[]) {
  return {
    config: { system: false, configPath: null, overrides },
    dryRun: false,
    force: false,
    reload: true,
  };
}

const OLD: Override[] = [];
/** Changes every unit, the Prometheus and Grafana config and lychd.yaml. */
const NEW: Override[] = [
  { path: ["cartridges", "vllm", "model"], value: "org/new-model", flag: "--model" },
  { path: ["gpu"], value: "nvidia:0", flag: "--gpu" },
  { path: ["harvester", "scrape_interval"], value: "10s", flag: "x" },
  { path: ["harvester", "image"], value: "docker.io/prom/prometheus:v3.5.1", flag: "x" },
  { path: ["scribe", "image"], value: "docker.io/grafana/grafana:12.2.1", flag: "x" },
];

async function stateAfter(files: Record<string, string>, overrides: Override[]) {
  const host = new FakeHost({ files });
  assertEquals(await init(host, options(overrides)), 0, host.stderr);
  return host.snapshot();
}

Deno.test("apply: a crash at any write leaves old-or-new files that the next init accepts", async () => {
  const before = await stateAfter({}, OLD);
  const after = await stateAfter(before, NEW);
  const changed = Object.keys(after).filter((p) => before[p] !== after[p] && p !== MANIFEST);
  assert(changed.length >= 4, "the update should touch several files");

  let crashes = 0;
  for (let k = 1;; k++) {
    const host = new FakeHost({ files: before, failOnWrite: k });
    let crashed = true;
    try {
      await init(host, options(NEW));
      crashed = false;
    } catch (e) {
      assert(String(e).includes(`simulated crash at write ${k}`));
    }
    if (!crashed) break;
    crashes++;
    const disk = host.snapshot();
    const manifest = JSON.parse(disk[MANIFEST] ?? '{"files":{}}').files as Record<string, string[]>;
    for (const path of new Set([...Object.keys(before), ...Object.keys(after)])) {
      if (path === MANIFEST || path.endsWith("grafana-admin-password")) continue;
      const now = disk[path];
      assert(
        now === before[path] || now === after[path],
        `${path} is neither old nor new after crash ${k}`,
      );
      if (now !== undefined && path in manifest) {
        assert(
          manifest[path].includes(await sha256(now)),
          `manifest does not accept ${path} after crash ${k}`,
        );
      }
    }
    const next = new FakeHost({ files: disk });
    assertEquals(await init(next, options(NEW)), 0, `init after crash ${k}: ${next.stderr}`);
    assertDeep(next.snapshot(), after);
  }
  // Every file write plus the two manifest writes were a crash point.
  assertEquals(crashes, changed.length + 2);
  console.log(`  ${crashes} crash points (every write step), 0 inconsistencies`);
});

Deno.test("apply: a failing write reports the error and leaves earlier files intact", async () => {
  const host = new FakeHost({ failOnWrite: 1 });
  await assertRejects(() => init(host, options(OLD)), /simulated crash at write 1/);
  assertDeep(host.snapshot(), {});
});
