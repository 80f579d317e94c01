/**
 * The GPU memory check of a swap to an NVIDIA engine, with a fake `nvidia-smi` that replays real
 * output of nvidia-smi 580 on an H200 (tests/fixtures/captures/nvidia-smi-580: no process, then
 * one process holding 19592 MiB). Between the stop of the old engine and the start of the new
 * one: memory free -> start; held by the stopped engine for 0.3 s -> wait, then start; held by a
 * stranger -> no start, the swap fails naming it and rolls back; nvidia-smi missing or failing
 * -> the swap goes on and says the memory was not checked.
 */
import { swap, swapDefaults, type SwapOptions } from "../lib/commands/swap.ts";
import { GPU_WAIT_MS, parseComputeApps } from "../lib/gpu.ts";
import type { RunResult } from "../lib/host.ts";
import { EXIT } from "../lib/exit.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { type EngineScript, type FakeSystemd, installedSystemd } from "./support/fake_systemd.ts";

const RAW = await Deno.readTextFile(
  new URL("./fixtures/captures/nvidia-smi-580/raw-outputs.txt", import.meta.url),
);
/** `--query-compute-apps=pid,process_name,used_gpu_memory --format=csv` with no process (verbatim). */
const FREE = RAW.slice(RAW.indexOf("== compute apps\n") + 16, RAW.indexOf("== version")).trimEnd() +
  "\n";
/** The same with one process holding memory (verbatim, from the end of the capture). */
const HELD = RAW.slice(RAW.lastIndexOf("pid, process_name"), RAW.lastIndexOf("MiB") + 3) + "\n";
const QUERY = "nvidia-smi --query-compute-apps=pid,process_name,used_gpu_memory --format=csv";

const setup = { system: false, configPath: null, overrides: [] };
const opts = (engine: string): SwapOptions => swapDefaults(setup, engine);
const ENGINES = (): Record<string, EngineScript> => ({
  llama: { model: "org/llama-gguf:Q4", readyMs: 500 },
  vllm: { model: "Qwen/Qwen2.5-7B-Instruct", readyMs: 1000 },
});

/** nvidia-smi answering `answer(now)` to the compute-apps query; every call recorded. */
function fakeSmi(fs: FakeSystemd, answer: (now: number) => RunResult) {
  fs.extraPrograms = (program) => program === "nvidia-smi" ? answer(fs.host.clock) : null;
}
const ok = (stdout: string): RunResult => ({ code: 0, stdout, stderr: "" });

Deno.test("gpu: the capture parses: no process, then PID 429 (python3) with 19592 MiB", () => {
  assertDeep(parseComputeApps(FREE), []);
  assertDeep(parseComputeApps(HELD), [{ pid: 429, name: "python3", usedMiB: 19592, gpu: null }]);
});

Deno.test("gpu: memory free: the old engine is stopped, the memory checked, then the new one starts", async () => {
  const fs = await installedSystemd(ENGINES(), "llama");
  fakeSmi(fs, () => ok(FREE));
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
  const order = fs.host.calls.filter((c) => /stop soulstone|start soulstone|nvidia-smi/.test(c));
  assertDeep(order, [
    "systemctl --user stop soulstone-llama.service",
    QUERY,
    "systemctl --user start soulstone-vllm.service",
  ]);
  assert(!fs.host.stderr.includes("GPU memory free after"), fs.host.stderr);
});

Deno.test("gpu: memory of the stopped engine still held for 0.3 s: the swap waits, then starts", async () => {
  const fs = await installedSystemd(ENGINES(), "llama");
  let releaseAt: number | null = null;
  fakeSmi(fs, (now) => {
    releaseAt ??= now + 300;
    return ok(now < releaseAt ? HELD : FREE);
  });
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
  assertMatch(fs.host.stderr, /GPU memory free after 0\.[34] s/);
  assert(fs.host.calls.includes("systemctl --user start soulstone-vllm.service"));
  assertEquals(fs.state("soulstone-vllm.service").state, "active");
});

Deno.test("gpu: memory held by a process that is not lychd's: not started, named, rolled back", async () => {
  const fs = await installedSystemd(ENGINES(), "llama");
  fakeSmi(fs, () => ok(HELD));
  const t0 = fs.host.clock;
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.ROLLED_BACK);
  assertMatch(
    fs.host.stderr,
    /vllm failed: GPU memory is still held 10\.\d s after every lychd engine stopped, by a process that is not lychd's: PID 429 \(python3\) holds 19592 MiB\. vllm was not started/,
  );
  assert(!fs.host.calls.includes("systemctl --user start soulstone-vllm.service"), "vllm started");
  // The wait is bounded; the rollback brings back what ran, without a second wait.
  assert(fs.host.clock - t0 < GPU_WAIT_MS + 5_000, `${fs.host.clock - t0} ms`);
  assertMatch(fs.host.stderr, /llama serves again, as before/);
  assertEquals(fs.state("soulstone-llama.service").state, "active");
});

Deno.test("gpu: nvidia-smi missing or failing: the swap goes on and says the memory was not checked", async () => {
  for (
    const [answer, said] of [
      [{ code: 127, stdout: "", stderr: "nvidia-smi: not found" }, /nvidia-smi is not installed/],
      // nvidia-smi's own words when the driver is gone (exit 9); not from the capture.
      [{
        code: 9,
        stdout:
          "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n",
        stderr: "",
      }, /nvidia-smi failed \(exit 9: NVIDIA-SMI has failed because it couldn't communicate/],
    ] as [RunResult, RegExp][]
  ) {
    const fs = await installedSystemd(ENGINES(), "llama");
    fakeSmi(fs, () => answer);
    assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
    assertMatch(fs.host.stderr, /GPU memory not checked: /);
    assertMatch(fs.host.stderr, said);
  }
});

Deno.test("gpu: with chosen GPUs, only a process on those GPUs counts", async () => {
  // DERIVED from the capture: its table with the gpu_uuid column lychd asks for when the engine
  // has chosen GPUs, on a host with a second GPU.
  const uuid0 = "GPU-11111111-2222-3333-4444-555555555555";
  const uuid1 = "GPU-66666666-7777-8888-9999-000000000000";
  const engines = ENGINES();
  engines.vllm.gpu = "nvidia:1";
  const fs = await installedSystemd(engines, "llama");
  const seen: string[] = [];
  fs.extraPrograms = (program, args) => {
    if (program !== "nvidia-smi") return null;
    seen.push(args.join(" "));
    if (args[0] === "--query-gpu=index,uuid") return ok(`0, ${uuid0}\n1, ${uuid1}\n`);
    // A stranger on GPU 0, for good.
    return ok(
      `pid, process_name, used_gpu_memory [MiB], gpu_uuid\n429, python3, 19592 MiB, ${uuid0}\n`,
    );
  };
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
  assertDeep(seen, [
    "--query-gpu=index,uuid --format=csv,noheader",
    "--query-compute-apps=pid,process_name,used_gpu_memory,gpu_uuid --format=csv",
  ]);
  // The same stranger on GPU 1 blocks it.
  const fs2 = await installedSystemd(engines, "llama");
  fs2.extraPrograms = (program, args) =>
    program !== "nvidia-smi"
      ? null
      : args[0] === "--query-gpu=index,uuid"
      ? ok(`0, ${uuid0}\n1, ${uuid1}\n`)
      : ok(
        `pid, process_name, used_gpu_memory [MiB], gpu_uuid\n429, python3, 19592 MiB, ${uuid1}\n`,
      );
  assertEquals(await swap(fs2.host, opts("vllm")), EXIT.ROLLED_BACK);
  assertMatch(fs2.host.stderr, /PID 429 \(python3\) holds 19592 MiB on GPU-6666/);
});

Deno.test("gpu: an AMD engine's swap says its GPU memory was not checked", async () => {
  const engines = ENGINES();
  engines.vllm.gpu = "amd";
  const fs = await installedSystemd(engines, "llama");
  assertEquals(await swap(fs.host, opts("vllm")), EXIT.OK, fs.host.stderr);
  assertMatch(fs.host.stderr, /GPU memory not checked: lychd checks it on NVIDIA GPUs only/);
  assert(!fs.host.calls.some((c) => c.startsWith("nvidia-smi")), "nvidia-smi asked about AMD");
});
