/**
 * Swap benchmark under real systemd, system mode (a sandbox guest, or this host with
 * LYCHD_E2E=host: tests/support/target.ts; needs root). A fake engine
 * becomes ready a fixed 2 s after its container starts. Alternating in one run, N times each:
 *   (a) `lychd swap --system llama` (from sglang), timed inside the guest;
 *   (b) the bare baseline back to sglang: `systemctl start soulstone-sglang.service`, then a
 *       tight 10 ms curl poll of the health URL until it answers 200.
 * Targets: median(a) <= 1.2 x median(b); lychd reports within 100 ms of the engine turning
 * ready (the fake engine says when that was: /whoami ready_at).
 *
 *   deno task bench:swap [N]     (default 5)
 */
import { buildFakeEngineImage, DENO, openTarget, ROOT } from "../tests/support/target.ts";

const N = Number(Deno.args[0] ?? 5);
const LOAD_MS = 2000;

function must(r: { code: number; stdout: string; stderr: string }, what: string) {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const target = await openTarget("system", ["/var/lib/lychd", "/etc/lychd"]);
const guest = target.run;
try {
  const image = await buildFakeEngineImage(target);
  must(
    await guest(
      ["sh", "-c", "cat > /etc/lychd/lychd.yaml"],
      `engines: [llama, sglang]
active: sglang
gpu: cpu
cartridges:
  llama: {image: ${image}, model: bench/llama, args: [--fake-load-ms, "${LOAD_MS}"]}
  sglang: {image: ${image}, model: bench/sglang, args: [--fake-load-ms, "${LOAD_MS}"]}
`,
    ),
    "writing lychd.yaml",
  );
  const lychd = `${DENO} run -q -P --frozen ${ROOT}/main.ts`;
  must(await guest(["sh", "-c", `${lychd} init --system`]), "lychd init");
  must(await guest(["sh", "-c", `${lychd} swap --system sglang`]), "first swap");

  const lychdTimes: number[] = [];
  const bareTimes: number[] = [];
  const delays: number[] = [];
  for (let i = 0; i < N; i++) {
    // (a) lychd swap: wall time inside the guest, and when the engine turned ready.
    const a = must(
      await guest([
        "sh",
        "-c",
        `t0=$(date +%s%N); ${lychd} swap --system llama >/dev/null; t1=$(date +%s%N);
        echo "$t0 $t1 $(curl -fsS 127.0.0.1:8081/whoami)"`,
      ]),
      "lychd swap",
    );
    const [t0, t1] = a.split(" ").slice(0, 2).map((n) => Number(n) / 1e6);
    const readyAt = Number(a.match(/ready_at=(\d+)/)![1]);
    lychdTimes.push(t1 - t0);
    delays.push(t1 - readyAt);
    // (b) the bare baseline back to sglang.
    const b = must(
      await guest([
        "sh",
        "-c",
        `t0=$(date +%s%N); systemctl start soulstone-sglang.service;
        until curl -fs -o /dev/null 127.0.0.1:8081/health; do sleep 0.01; done; t1=$(date +%s%N); echo "$t0 $t1"`,
      ]),
      "baseline",
    );
    const [b0, b1] = b.trim().split(" ").map((n) => Number(n) / 1e6);
    bareTimes.push(b1 - b0);
    console.log(
      `run ${i + 1}: lychd swap ${(t1 - t0).toFixed(0)} ms (reported ${
        (t1 - readyAt).toFixed(0)
      } ms after ready), ` +
        `bare ${(b1 - b0).toFixed(0)} ms`,
    );
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const ratio = median(lychdTimes) / median(bareTimes);
  const maxDelay = Math.max(...delays);
  console.log(
    `\nmedian lychd swap ${median(lychdTimes).toFixed(0)} ms, median bare ${
      median(bareTimes).toFixed(0)
    } ms`,
  );
  console.log(`ratio ${ratio.toFixed(2)}x (target <= 1.2x): ${ratio <= 1.2 ? "ok" : "OVER"}`);
  console.log(
    `ready -> reported: median ${median(delays).toFixed(0)} ms, max ${maxDelay.toFixed(0)} ms ` +
      `(target < 100 ms): ${maxDelay < 100 ? "ok" : "OVER"}`,
  );
  Deno.exitCode = ratio <= 1.2 && maxDelay < 100 ? 0 : 1;
} finally {
  await target.close();
}
