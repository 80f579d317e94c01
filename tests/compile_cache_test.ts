/**
 * The engines' compile and JIT caches live in a folder of lychd's per engine, mounted into the
 * container, so that a restart (the container is removed at every stop) finds them: init creates
 * the folders, status reports their size, uninstall --purge removes them, a custom engine can
 * declare its own. (Quadlet and systemd-analyze check the mounts and variables in
 * quadlet_test.ts; e2e_swaps_test.ts shows an engine finding its cache after a swap away.)
 */
import { init } from "../lib/commands/init.ts";
import { status } from "../lib/commands/status.ts";
import { uninstall } from "../lib/commands/uninstall.ts";
import type { Override } from "../lib/config/yaml.ts";
import { EXIT } from "../lib/exit.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { installedSystemd } from "./support/fake_systemd.ts";

const setup = { system: false, configPath: null, overrides: [] as Override[] };
const CACHE = "/home/ada/.cache/lychd";
const UNITS = "/home/ada/.config/containers/systemd";

Deno.test("compile caches: init creates a folder per engine; status reports each one's size", async () => {
  const fs = await installedSystemd({
    llama: { model: "org/llama-gguf:Q4", gpu: "cpu" },
    vllm: { model: "org/vllm", gpu: "cpu" },
  }, "llama");
  assert(fs.host.dirs.has(`${CACHE}/vllm`), [...fs.host.dirs].join(" "));
  assert(fs.host.dirs.has(`${CACHE}/llama`));
  // What the engine compiled on its first start.
  fs.host.files.set(`${CACHE}/vllm/vllm/torch_compile_cache/abc/rank_0_0/model.bin`, {
    data: new Uint8Array(3 * 1024 * 1024),
    mode: 0o644,
  });
  await status(fs.host, { config: setup, json: true });
  const report = JSON.parse(fs.host.stdout);
  const cache = (e: string) =>
    report.engines.find((x: { name: string }) => x.name === e).compileCache;
  assertDeep(cache("vllm"), { path: `${CACHE}/vllm`, bytes: 3 * 1024 * 1024 });
  assertDeep(cache("llama"), { path: `${CACHE}/llama`, bytes: 0 });
  fs.host.stdout = "";
  await status(fs.host, { config: setup, json: false });
  assertMatch(fs.host.stdout, /compile cache \/home\/ada\/\.cache\/lychd\/vllm \[3\.\d MB\]/);
});

Deno.test("compile caches: a custom engine declares its own, each folder mounted from lychd's", async () => {
  const fs = await installedSystemd({ llama: { model: "org/llama-gguf:Q4", gpu: "cpu" } }, "llama");
  fs.host.stdout = "";
  assertEquals(
    await init(fs.host, {
      config: {
        ...setup,
        overrides: [
          { path: ["engines"], value: ["llama", "tgi"], flag: "--engines" },
          { path: ["cartridges", "tgi", "image"], value: "localhost/tgi:1", flag: "test" },
          { path: ["cartridges", "tgi", "port"], value: 80, flag: "test" },
          {
            path: ["cartridges", "tgi", "caches"],
            value: ["/root/.triton", "/data/compiled"],
            flag: "test",
          },
        ],
      },
      dryRun: false,
      force: false,
      reload: true,
    }),
    EXIT.OK,
    fs.host.stderr,
  );
  const unit = fs.host.text(`${UNITS}/soulstone-tgi.container`)!;
  assertMatch(unit, /^Volume=\/home\/ada\/\.cache\/lychd\/tgi\/root_\.triton:\/root\/\.triton:z$/m);
  assertMatch(unit, /^Volume=\/home\/ada\/\.cache\/lychd\/tgi\/data_compiled:\/data\/compiled:z$/m);
  // A custom engine gets no built-in cache variables, and no warm-up unless it asks.
  assert(!unit.includes("/lychd/cache"), unit);
  assert(fs.host.dirs.has(`${CACHE}/tgi/root_.triton`));
});

Deno.test("compile caches: uninstall --purge removes lychd's cache folder (--dry-run lists it)", async () => {
  const fs = await installedSystemd({ vllm: { model: "org/vllm", gpu: "cpu" } }, "vllm");
  fs.host.files.set(`${CACHE}/vllm/triton/k.cubin`, { data: new Uint8Array(10), mode: 0o644 });
  await uninstall(fs.host, { config: setup, purge: true, dryRun: true, force: false });
  assertMatch(
    fs.host.stdout,
    /would remove {2}\/home\/ada\/\.cache\/lychd \(the engines' compile caches\)/,
  );
  assert(fs.host.files.has(`${CACHE}/vllm/triton/k.cubin`), "the dry run removed it");
  fs.host.stdout = "";
  await uninstall(fs.host, { config: setup, purge: true, dryRun: false, force: false });
  assertMatch(
    fs.host.stdout,
    /removed {2}\/home\/ada\/\.cache\/lychd \(the engines' compile caches\)/,
  );
  assert(!fs.host.files.has(`${CACHE}/vllm/triton/k.cubin`), "still there");
});

Deno.test("compile caches: files owned by the container's other users go through podman unshare", async () => {
  const fs = await installedSystemd({ vllm: { model: "org/vllm", gpu: "cpu" } }, "vllm");
  fs.host.files.set(`${CACHE}/vllm/triton/k.cubin`, { data: new Uint8Array(10), mode: 0o644 });
  fs.host.removeTree = () => Promise.reject(new Deno.errors.PermissionDenied("Permission denied"));
  assertEquals(
    await uninstall(fs.host, { config: setup, purge: true, dryRun: false, force: false }),
    EXIT.OK,
    fs.host.stderr,
  );
  assert(fs.host.calls.includes(`podman unshare rm -rf ${CACHE}`), fs.host.calls.join("\n"));
});
