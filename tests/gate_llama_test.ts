/**
 * The gate's core in front of the real llama.cpp server, on this machine (no systemd): 16
 * clients send 3,000 chat requests through it, half streaming. Not one may fail. With the
 * engine's connections kept alive, about 1 in 400 ended in "connection closed before message
 * completed" (llama.cpp closes a kept-alive connection after a few requests), a 502 no client
 * can act on; lib/gate/proxy.ts's engineClient keeps none.
 */
import { assertDeep } from "./support/assert.ts";
import { Gate } from "../lib/gate/proxy.ts";
import { freePort } from "./support/ports.ts";
import { LLAMA_DIR, llamaMissing } from "./support/target.ts";
import { waitUntil } from "./support/wait.ts";

Deno.test({
  name: "gate to the real llama.cpp server: 3,000 requests from 16 clients, none cut off",
  ignore: llamaMissing(),
  fn: async () => {
    const port = freePort();
    const server = new Deno.Command(`${LLAMA_DIR}/llama-server`, {
      args: ["-m", `${LLAMA_DIR}/tiny.gguf`, "--port", String(port), "--host", "127.0.0.1"]
        .concat(["--ctx-size", "8192", "--threads", "2"]),
      stdout: "null",
      stderr: "null",
    }).spawn();
    const url = `http://127.0.0.1:${port}`;
    const gate = new Gate(url, { holdTimeoutMs: 60_000, maxHeld: 64 });
    gate.open(url, "llama");
    try {
      await waitUntil(async () => {
        const r = await fetch(`${url}/health`).catch(() => null);
        await r?.body?.cancel();
        return r?.status === 200;
      }, "llama.cpp to load");
      const prompt = "Tell me about the gate of the vessel. ".repeat(12);
      let left = 3000;
      const failures: string[] = [];
      await Promise.all(Array.from({ length: 16 }, async (_, i) => {
        while (left-- > 0) {
          const r = await gate.handle(
            new Request("http://127.0.0.1:8081/v1/chat/completions", {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({
                messages: [{ role: "user", content: prompt }],
                max_tokens: 8,
                stream: i % 2 === 1,
              }),
            }),
          );
          const text = await r.text();
          if (r.status !== 200) failures.push(`${r.status} ${text.slice(0, 200)}`);
        }
      }));
      assertDeep(failures, []);
    } finally {
      gate.dispose();
      server.kill("SIGKILL");
      await server.status;
    }
  },
});
