/**
 * The check that an engine that said it sleeps gave its GPU memory back (lib/gpu.ts,
 * docs/warm-swaps.md "Checking the sleep"): only the unit's own processes count (found through
 * its cgroup, children included, as Podman nests a container's processes), at most half of what
 * they held may remain, and what nvidia-smi cannot tell is "not known", never "released".
 */
import { denoHost, type Host } from "../lib/host.ts";
import { unitGpuMemory, unitPids, waitForRelease } from "../lib/gpu.ts";
import { assertDeep, assertEquals } from "./support/assert.ts";

const UNIT = "soulstone-vllm.service";
const CG = "/app.slice/soulstone-vllm.service";

/** A host whose systemctl names the cgroup, whose nvidia-smi answers `apps()`, on a fake clock. */
function host(apps: () => string, files: Record<string, string>): Host {
  let clock = 0;
  return {
    run: (program: string, args: string[]) =>
      Promise.resolve(
        program === "systemctl" && args.includes("ControlGroup")
          ? { code: 0, stdout: `ControlGroup=${CG}\n`, stderr: "" }
          : program === "nvidia-smi"
          ? { code: 0, stdout: `pid, process_name, used_gpu_memory [MiB]\n${apps()}`, stderr: "" }
          : { code: 127, stdout: "", stderr: "not here" },
      ),
    readFile: (path: string) =>
      Promise.resolve(path in files ? new TextEncoder().encode(files[path]) : null),
    listDir: (path: string) =>
      Promise.resolve([
        ...new Set(
          Object.keys(files).filter((p) => p.startsWith(`${path}/`))
            .map((p) => p.slice(path.length + 1).split("/")[0]),
        ),
      ]),
    now: () => clock,
    sleep: (ms: number) => {
      clock += ms;
      return Promise.resolve();
    },
  } as unknown as Host;
}

const CGROUP = {
  [`/sys/fs/cgroup${CG}/cgroup.procs`]: "3000\n",
  [`/sys/fs/cgroup${CG}/libpod-payload-1/cgroup.procs`]: "4000\n",
  [`/sys/fs/cgroup${CG}/libpod-payload-1/inner/cgroup.procs`]: "4001\n",
};

Deno.test("gpu release: a unit's processes are found through its cgroup and the cgroups below", async () => {
  // Real folders, as /sys/fs/cgroup lays them out (files beside the child cgroups).
  const root = await Deno.makeTempDir();
  try {
    const dir = `${root}${CG}`;
    await Deno.mkdir(`${dir}/libpod-payload-1/inner`, { recursive: true });
    await Deno.writeTextFile(`${dir}/cgroup.procs`, "3000\n");
    await Deno.writeTextFile(`${dir}/memory.max`, "max\n");
    await Deno.writeTextFile(`${dir}/libpod-payload-1/cgroup.procs`, "4000\n4002\n");
    await Deno.writeTextFile(`${dir}/libpod-payload-1/inner/cgroup.procs`, "4001\n");
    const real = {
      ...denoHost,
      run: () => Promise.resolve({ code: 0, stdout: `ControlGroup=${CG}\n`, stderr: "" }),
    } as Host;
    const pids = await unitPids(real, [], UNIT, root);
    assertDeep([...(pids as Set<number>)].sort(), [3000, 4000, 4001, 4002]);
    assertEquals(
      await unitPids(real, [], UNIT, `${root}/nowhere`),
      `its control group ${CG} is not readable under ${root}/nowhere`,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("gpu release: only the unit's own processes count; another workload does not", async () => {
  const h = host(
    () => "4000, python3, 15000 MiB\n4001, python3, 5000 MiB\n9999, x, 40000 MiB\n",
    CGROUP,
  );
  assertEquals(await unitGpuMemory(h, [], UNIT), 20000);
  const na = host(() => "4000, python3, [N/A]\n", CGROUP);
  assertEquals(
    await unitGpuMemory(na, [], UNIT),
    "nvidia-smi does not say how much its processes hold ([N/A])",
  );
});

Deno.test("gpu release: at most half may remain; the boundary, a wait, and nothing to compare with", async () => {
  const after = (mib: number) => host(() => `4000, python3, ${mib} MiB\n`, CGROUP);
  assertEquals((await waitForRelease(after(10000), [], UNIT, 20000)).state, "released");
  const held = await waitForRelease(after(10001), [], UNIT, 20000);
  assertDeep(held, { state: "held", beforeMiB: 20000, afterMiB: 10001 });
  // A release that shows late in nvidia-smi is waited for (2 s).
  let looks = 0;
  const late = host(() => `4000, python3, ${++looks < 4 ? 20000 : 600} MiB\n`, CGROUP);
  assertDeep(await waitForRelease(late, [], UNIT, 20000), {
    state: "released",
    beforeMiB: 20000,
    afterMiB: 600,
  });
  // Nothing held before (none of its processes listed): not known, never "released".
  assertEquals((await waitForRelease(after(0), [], UNIT, 0)).state, "unknown");
});
