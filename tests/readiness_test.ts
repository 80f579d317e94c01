/** Readiness against what a real llama.cpp server answered (tests/fixtures/llama.cpp-b10587). */
import type { HttpResult } from "../lib/host.ts";
import { modelIds, probe } from "../lib/readiness.ts";
import { assertDeep, assertEquals } from "./support/assert.ts";
import { FakeHost } from "./support/fake_host.ts";

const DIR = new URL("./fixtures/llama.cpp-b10587/", import.meta.url);
const MODELS = await Deno.readTextFile(new URL("v1-models.json", DIR));
const SEQUENCE = (await Deno.readTextFile(new URL("health-startup-sequence.tsv", DIR)))
  .split("\n").filter((l) => l && !l.startsWith("#") && !l.startsWith("t_request"))
  .map((l) => l.split("\t"));

Deno.test("readiness: llama.cpp's /v1/models names the model by its path, and aliases", () => {
  assertDeep(modelIds(MODELS), ["/models/tiny-llama.gguf"]);
  assertDeep(modelIds('{"data":[{"id":"a","aliases":["b","a"]}]}'), ["a", "b"]);
  assertDeep(modelIds("not json"), []);
});

Deno.test("readiness: the real start-up sequence reads refused -> loading -> ready, never ready early", async () => {
  const states: string[] = [];
  for (const [, , status, body] of SEQUENCE) {
    const answer: HttpResult = status === "ECONNREFUSED"
      ? { error: "refused" }
      : { status: Number(status), body: body ?? "" };
    const host = new FakeHost({
      http: (url) => url.endsWith("/v1/models") ? { status: 200, body: MODELS } : answer,
    });
    const p = await probe(host, {
      hostPort: 8081,
      healthPath: "/health",
      model: "/models/tiny-llama.gguf",
    });
    if (states.at(-1) !== p.state) states.push(p.state);
    if (p.state === "loading") assertEquals(p.detail, "503 Loading model");
  }
  assertDeep(states, ["down", "loading", "ready"]);
});

Deno.test("readiness: healthy but serving another model is not ready", async () => {
  const host = new FakeHost({
    http: (url) =>
      url.endsWith("/v1/models") ? { status: 200, body: MODELS } : { status: 200, body: "{}" },
  });
  const p = await probe(host, { hostPort: 8081, healthPath: "/health", model: "org/expected" });
  assertEquals(p.state, "wrong-model");
  assertEquals(p.detail, "serves /models/tiny-llama.gguf, not org/expected");
});

Deno.test("readiness: a real vLLM /v1/models body (ModelCard with permission list) names its model", () => {
  const body = Deno.readTextFileSync(
    new URL(
      "./fixtures/captures/vllm-omni-2025-12-issue414-v1-models/v1-models.json",
      import.meta.url,
    ),
  );
  assertDeep(modelIds(body), ["Qwen/Qwen2.5-Omni-7B"]);
});
