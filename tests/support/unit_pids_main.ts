/**
 * Prints, as JSON, the PIDs lib/gpu.ts's unitPids finds for a unit (or why none): run by the
 * end-to-end warm-swap test inside the sandbox guest, under deno.json's permission set, to compare
 * with what Podman says runs in the engine's container.
 * Usage: unit_pids_main.ts UNIT [--user]
 */
import { denoHost } from "../../lib/host.ts";
import { unitPids } from "../../lib/gpu.ts";

const [unit, ...scope] = Deno.args;
const pids = await unitPids(denoHost, scope, unit);
console.log(JSON.stringify(typeof pids === "string" ? pids : [...pids].sort((a, b) => a - b)));
