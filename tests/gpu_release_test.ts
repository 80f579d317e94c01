/**
 * The check that an engine that said it sleeps gave its GPU memory back (lib/gpu.ts,
 * docs/warm-swaps.md "Checking the sleep"): only the unit's own processes count (the PIDs of
 * `systemctl status`'s cgroup tree, the container's child cgroup included), at most half of what
 * they held may remain, and what nvidia-smi cannot tell is "not known", never "released".
 */
import type { Host } from "../lib/host.ts";
import { parseStatusPids, unitGpuMemory, waitForRelease } from "../lib/gpu.ts";
import { assertDeep, assertEquals } from "./support/assert.ts";

const STATUS = await Deno.readTextFile(
  new URL("./fixtures/captures/systemctl-status-252/soulstone.txt", import.meta.url),
);

const UNIT = "soulstone-vllm.service";
/** The PIDs in STATUS (the capture's README lists them). */
const CAPTURED = JSON.parse(
  await Deno.readTextFile(
    new URL("./fixtures/captures/systemctl-status-252/pids.json", import.meta.url),
  ),
) as number[];

/** A host whose systemctl status lists the PIDs, whose nvidia-smi answers `apps()`, fake clock. */
function host(apps: () => string, pids = [3000, 4000, 4001]): Host {
  let clock = 0;
  const status = `● ${UNIT} - x\n     CGroup: /system.slice/${UNIT}\n` +
    pids.map((p) => `             ├─${p} python3\n`).join("");
  return {
    run: (program: string, args: string[]) =>
      Promise.resolve(
        program === "systemctl" && args.includes("status")
          ? { code: 0, stdout: status, stderr: "" }
          : program === "nvidia-smi"
          ? { code: 0, stdout: `pid, process_name, used_gpu_memory [MiB]\n${apps()}`, stderr: "" }
          : { code: 127, stdout: "", stderr: "not here" },
      ),
    now: () => clock,
    sleep: (ms: number) => {
      clock += ms;
      return Promise.resolve();
    },
  } as unknown as Host;
}

Deno.test("gpu release: the PIDs of real systemctl status output (systemd 252, a Quadlet unit)", () => {
  assertDeep([...parseStatusPids(STATUS)!].sort((a, b) => a - b), CAPTURED);
  // An inactive unit has no tree.
  assertEquals(parseStatusPids(`○ ${UNIT}\n     Active: inactive (dead)\n`), null);
});

Deno.test("gpu release: only the unit's own processes count; another workload does not", async () => {
  const h = host(() => "4000, python3, 15000 MiB\n4001, python3, 5000 MiB\n9999, x, 40000 MiB\n");
  assertEquals(await unitGpuMemory(h, [], UNIT), 20000);
  const na = host(() => "4000, python3, [N/A]\n");
  assertEquals(
    await unitGpuMemory(na, [], UNIT),
    "nvidia-smi does not say how much its processes hold ([N/A])",
  );
});

Deno.test("gpu release: at most half may remain; the boundary, a wait, and nothing to compare with", async () => {
  const after = (mib: number) => host(() => `4000, python3, ${mib} MiB\n`);
  assertEquals((await waitForRelease(after(10000), [], UNIT, 20000)).state, "released");
  const held = await waitForRelease(after(10001), [], UNIT, 20000);
  assertDeep(held, { state: "held", beforeMiB: 20000, afterMiB: 10001 });
  // A release that shows late in nvidia-smi is waited for (2 s).
  let looks = 0;
  const late = host(() => `4000, python3, ${++looks < 4 ? 20000 : 600} MiB\n`);
  assertDeep(await waitForRelease(late, [], UNIT, 20000), {
    state: "released",
    beforeMiB: 20000,
    afterMiB: 600,
  });
  // Nothing held before (none of its processes listed): not known, never "released".
  assertEquals((await waitForRelease(after(0), [], UNIT, 0)).state, "unknown");
});
