/**
 * What the engine's network costs a swap (docs/engines.md, "The engine's network"), under real
 * systemd, system mode (a sandbox guest, or this host with LYCHD_E2E=host; needs root). Two real
 * llama.cpp engines (the built-in llama and a custom one, alpha, on the same tiny GGUF), swapped
 * back and forth with `lychd swap`, in rounds that alternate the network of both: `host` (llama's
 * default) and `private` (a network of Podman's own, one port published). Prints, per network,
 * the medians of lychd's own report: the old engine stopped, the container up, the whole swap.
 *
 *   deno task bench:network [ROUNDS] [SWAPS]     (default 3 rounds x 6 swaps per network)
 */
import {
  buildLlamaImage,
  LLAMA_DIR,
  openTarget,
  type Run,
  twoLlamas,
  writeConfig,
} from "../tests/support/target.ts";

const ROUNDS = Number(Deno.args[0] ?? 3);
const SWAPS = Number(Deno.args[1] ?? 6);
const MODEL_DIR = "/srv/lychd-models";
const NETWORKS = ["host", "private"] as const;
type Net = typeof NETWORKS[number];

function must(r: Run, what: string): string {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const target = await openTarget("system", ["/var/lib/lychd", "/etc/lychd", MODEL_DIR]);
const lychd = async (...a: string[]) =>
  must(await target.lychd(...a, "--system"), `lychd ${a.join(" ")}`);

/** Both engines on `net`. */
function config(net: Net): string {
  return `engines: [llama, alpha]
active: llama
gpu: cpu
model_cache: ${MODEL_DIR}
${twoLlamas(net, MODEL_DIR)}`;
}

/** Seconds of one phase in a swap's report ("old engine stopped 0.6 s"), or of the whole. */
function seconds(report: string, phase: string): number {
  const m = report.match(new RegExp(`${phase} ([0-9.]+) (ms|s)\\b`));
  if (!m) throw new Error(`no "${phase}" in the swap's report: ${report}`);
  return Number(m[1]) / (m[2] === "ms" ? 1000 : 1);
}

const times: Record<Net, { stop: number[]; up: number[]; ready: number[] }> = {
  host: { stop: [], up: [], ready: [] },
  private: { stop: [], up: [], ready: [] },
};
try {
  await buildLlamaImage(target);
  must(
    await target.run(["cp", `${LLAMA_DIR}/tiny.gguf`, `${MODEL_DIR}/tiny.gguf`]),
    "copying the model",
  );
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? NETWORKS : [...NETWORKS].reverse();
    for (const net of order) {
      await target.lychd("stop", "--system"); // nothing to stop before the first init
      must(await writeConfig(target, config(net)), "writing lychd.yaml");
      await lychd("init");
      await lychd("swap", "llama");
      const line: string[] = [];
      for (let i = 0; i < SWAPS; i++) {
        const to = i % 2 === 0 ? "alpha" : "llama";
        const report = (await lychd("swap", to)).split("\n").find((l) => / ready in /.test(l));
        if (!report) throw new Error(`lychd swap ${to} printed no report`);
        const t = times[net];
        t.stop.push(seconds(report, "old engine stopped"));
        t.up.push(seconds(report, "container up"));
        t.ready.push(seconds(report, "ready in"));
        line.push(t.ready.at(-1)!.toFixed(2));
      }
      console.log(`round ${round}, ${net.padEnd(7)}: swaps ready in ${line.join(" ")} s`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}`;
  console.log(`\nover ${ROUNDS} rounds x ${SWAPS} swaps per network (medians, range):`);
  for (const net of NETWORKS) {
    const t = times[net];
    console.log(
      `  ${net.padEnd(7)} old engine stopped ${median(t.stop).toFixed(2)} s (${range(t.stop)}), ` +
        `container up ${median(t.up).toFixed(2)} s (${range(t.up)}), ready in ${
          median(t.ready).toFixed(2)
        } s (${range(t.ready)})`,
    );
  }
  console.log(
    `  host / private, ready in: ${
      (median(times.host.ready) / median(times.private.ready)).toFixed(2)
    }x`,
  );
} finally {
  await target.close();
}
