/**
 * Is the GPU memory an engine needs free? Before a swap starts an NVIDIA engine, every lychd
 * engine is stopped, so a process still holding memory on its GPUs is either the engine that
 * just stopped (its memory comes back within a fraction of a second once its process has exited:
 * docs/engines.md, "GPU memory after a stop") or something that is not lychd's, which would make
 * the new engine fail its load with an out-of-memory error minutes later. lychd waits a bounded
 * time for the first and names the second.
 */
import type { Host } from "./host.ts";
import type { Engine } from "./units/model.ts";

export interface GpuProcess {
  pid: number;
  name: string;
  /** MiB, or null where nvidia-smi cannot tell ("[N/A]"). */
  usedMiB: number | null;
  /** The GPU's UUID, when it was asked for. */
  gpu: string | null;
}

/** The rows of `nvidia-smi --query-compute-apps=... --format=csv` (header and units included). */
export function parseComputeApps(csv: string): GpuProcess[] {
  const lines = csv.split("\n").map((l) => l.trim()).filter((l) => l);
  if (lines.length === 0) return [];
  const header = lines[0].split(",").map((h) => h.trim().replace(/ \[.*\]$/, ""));
  const col = (row: string[], name: string) => {
    const i = header.indexOf(name);
    return i < 0 ? undefined : row[i]?.trim();
  };
  return lines.slice(1).map((line) => {
    const row = line.split(",");
    const used = Number((col(row, "used_gpu_memory") ?? "").replace(/ MiB$/, ""));
    return {
      pid: Number(col(row, "pid")),
      name: col(row, "process_name") ?? "?",
      usedMiB: Number.isFinite(used) ? used : null,
      gpu: col(row, "gpu_uuid") ?? null,
    };
  });
}

/** `index, uuid` lines (`--query-gpu=index,uuid --format=csv,noheader`) -> index -> UUID. */
export function parseGpuIndexes(csv: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of csv.split("\n")) {
    const [index, uuid] = line.split(",").map((s) => s.trim());
    if (index && uuid) out.set(index, uuid);
  }
  return out;
}

export type GpuMemory =
  /** Nothing held (now, or after waiting `waitedMs` for the stopped engine's process). */
  | { state: "free"; waitedMs: number }
  /** Still held after the wait: the swap must not start the engine. */
  | { state: "held"; holders: GpuProcess[]; waitedMs: number }
  /** Not checked (no nvidia-smi, or it failed): the swap goes on and says so. */
  | { state: "unknown"; why: string };

export const GPU_WAIT_MS = 10_000;
const POLL_MS = 200;

/** Wait (up to `waitMs`) until no process holds memory on `engine`'s NVIDIA GPUs. */
export async function waitForGpuMemory(
  host: Host,
  engine: Engine,
  waitMs = GPU_WAIT_MS,
): Promise<GpuMemory> {
  const devices = engine.gpu.devices;
  let uuids: Set<string> | null = null;
  if (devices.length > 0) {
    const r = await host.run("nvidia-smi", ["--query-gpu=index,uuid", "--format=csv,noheader"]);
    if (r.code !== 0) return unknown(r);
    const byIndex = parseGpuIndexes(r.stdout);
    uuids = new Set(devices.map((d) => byIndex.get(d)).filter((u): u is string => !!u));
  }
  const fields = `pid,process_name,used_gpu_memory${uuids ? ",gpu_uuid" : ""}`;
  const t0 = host.now();
  for (;;) {
    const r = await host.run("nvidia-smi", [`--query-compute-apps=${fields}`, "--format=csv"]);
    if (r.code !== 0) return unknown(r);
    const holders = parseComputeApps(r.stdout).filter((p) =>
      uuids === null || (p.gpu !== null && uuids.has(p.gpu))
    );
    const waitedMs = host.now() - t0;
    if (holders.length === 0) return { state: "free", waitedMs };
    if (waitedMs >= waitMs) return { state: "held", holders, waitedMs };
    await host.sleep(POLL_MS);
  }
}

function unknown(r: { code: number; stdout: string; stderr: string }): GpuMemory {
  return { state: "unknown", why: smiFailure(r) };
}

/** Why nvidia-smi told nothing: not installed, or its first line of complaint. */
function smiFailure(r: { code: number; stdout: string; stderr: string }): string {
  return r.code === 127
    ? "nvidia-smi is not installed"
    : `nvidia-smi failed (exit ${r.code}: ${(r.stderr || r.stdout).trim().split("\n")[0]})`;
}

/** "PID 429 (python3) holds 19592 MiB" for each holder. */
export function describeHolders(holders: GpuProcess[]): string {
  return holders.map((p) =>
    `PID ${p.pid} (${p.name}) holds ${
      p.usedMiB === null ? "an unknown amount of" : `${p.usedMiB} MiB`
    }${p.gpu ? ` on ${p.gpu}` : ""}`
  ).join("; ");
}

/**
 * The PIDs in a unit's cgroup and below it (Podman puts a container's processes in a child), as
 * `systemctl status` lists them under "CGroup:". Not read from /sys/fs/cgroup: Deno lets a
 * program read under /sys only with every permission granted (denoland/deno#27564).
 */
export async function unitPids(
  host: Host,
  scope: string[],
  unit: string,
): Promise<Set<number> | string> {
  const r = await host.run("systemctl", [
    ...scope,
    "status",
    "--no-pager",
    "--full",
    "--lines=0",
    unit,
  ]);
  return parseStatusPids(r.stdout) ?? `systemctl status lists no control group for ${unit}`;
}

/**
 * The PIDs of `systemctl status`'s "CGroup:" tree (lines such as `│ └─ 4000 python3 ...`); null
 * when it shows no tree. The tree ends at the first line that is not indented.
 */
export function parseStatusPids(status: string): Set<number> | null {
  const lines = status.split("\n");
  const at = lines.findIndex((l) => /^\s*CGroup: /.test(l));
  if (at < 0) return null;
  const pids = new Set<number>();
  for (const line of lines.slice(at + 1)) {
    if (!/^\s/.test(line)) break;
    const m = line.match(/^[\s│├└─]*(\d+) /);
    if (m) pids.add(Number(m[1]));
  }
  return pids;
}

/**
 * MiB that a unit's processes hold on the GPUs, by PID (`nvidia-smi --query-compute-apps`), or
 * why not known. Only its own processes: another workload on the GPU does not count.
 */
export async function unitGpuMemory(
  host: Host,
  scope: string[],
  unit: string,
): Promise<number | string> {
  const pids = await unitPids(host, scope, unit);
  if (typeof pids === "string") return pids;
  const r = await host.run("nvidia-smi", [
    "--query-compute-apps=pid,process_name,used_gpu_memory",
    "--format=csv",
  ]);
  if (r.code !== 0) return smiFailure(r);
  const mine = parseComputeApps(r.stdout).filter((p) => pids.has(p.pid));
  if (mine.some((p) => p.usedMiB === null)) {
    return "nvidia-smi does not say how much its processes hold ([N/A])";
  }
  return mine.reduce((sum, p) => sum + p.usedMiB!, 0);
}

export type Release =
  | { state: "released"; beforeMiB: number; afterMiB: number }
  | { state: "held"; beforeMiB: number; afterMiB: number }
  | { state: "unknown"; why: string };

/** How long a sleep's release may take to show in nvidia-smi; vLLM frees before it answers. */
export const RELEASE_WAIT_MS = 2_000;

/**
 * After an engine said it sleeps: did its processes give their GPU memory back? At most half of
 * what they held before it slept may remain (a sleep gives back the weights and the KV cache,
 * nearly all of it; the CUDA context stays: docs/warm-swaps.md, "Checking the sleep").
 */
export async function waitForRelease(
  host: Host,
  scope: string[],
  unit: string,
  beforeMiB: number,
  waitMs = RELEASE_WAIT_MS,
): Promise<Release> {
  if (beforeMiB <= 0) return { state: "unknown", why: "nvidia-smi lists none of its processes" };
  const t0 = host.now();
  for (;;) {
    const after = await unitGpuMemory(host, scope, unit);
    if (typeof after === "string") return { state: "unknown", why: after };
    if (after <= beforeMiB / 2) return { state: "released", beforeMiB, afterMiB: after };
    if (host.now() - t0 >= waitMs) return { state: "held", beforeMiB, afterMiB: after };
    await host.sleep(POLL_MS);
  }
}
