/** argv -> Command: the pure parser. */
import { parseCommand } from "../lib/cli.ts";
import { UsageError } from "../lib/errors.ts";
import { assertDeep, assertEquals, assertThrows } from "./support/assert.ts";

Deno.test("cli: help and version forms", () => {
  assertDeep(parseCommand([]), { kind: "help", topic: null });
  assertDeep(parseCommand(["--help"]), { kind: "help", topic: null });
  assertDeep(parseCommand(["help", "init"]), { kind: "help", topic: "init" });
  assertDeep(parseCommand(["init", "-h"]), { kind: "help", topic: "init" });
  assertDeep(parseCommand(["--version"]), { kind: "version" });
  assertDeep(parseCommand(["-V"]), { kind: "version" });
});

Deno.test("cli: init flags become overrides on lychd.yaml keys", () => {
  const c = parseCommand([
    "init",
    "--dry-run",
    "--engines",
    "vllm, llama",
    "--model",
    "vllm=Qwen/Qwen2.5-7B-Instruct",
    "--model",
    "llama=/m/a=b.gguf",
    "--image",
    "llama=ghcr.io/ggml-org/llama.cpp:server-b1",
    "--gpu=nvidia:0",
    "--hf-token-secret",
    "hf",
    "--system",
  ]);
  if (c.kind !== "init") throw new Error(c.kind);
  assertEquals(c.dryRun, true);
  assertEquals(c.force, false);
  assertEquals(c.reload, true);
  assertEquals(c.config.system, true);
  assertDeep(c.config.overrides.map((o) => [o.path.join("."), o.value]), [
    ["engines", ["vllm", "llama"]],
    ["gpu", "nvidia:0"],
    ["secrets.HF_TOKEN", "hf"],
    ["cartridges.vllm.model", "Qwen/Qwen2.5-7B-Instruct"],
    ["cartridges.llama.model", "/m/a=b.gguf"],
    ["cartridges.llama.image", "ghcr.io/ggml-org/llama.cpp:server-b1"],
  ]);
});

Deno.test("cli: mistakes are usage errors with a pointer to help", () => {
  assertThrows(() => parseCommand(["frobnicate"]), UsageError);
  assertThrows(
    () => parseCommand(["init", "--modle", "x"]),
    /unknown option --modle \(did you mean "--model"\?\)\. See `lychd init --help`/,
  );
  assertThrows(() => parseCommand(["init", "--gpu"]), /--gpu needs a value/);
  assertThrows(() => parseCommand(["init", "--gpu", "cpu", "--gpu=amd"]), /--gpu is given twice/);
  assertThrows(() => parseCommand(["init", "--force=yes"]), /--force takes no value/);
  assertThrows(() => parseCommand(["init", "extra"]), /takes no argument, not "extra"/);
  assertThrows(() => parseCommand(["init", "--model", "vllm"]), /--model takes ENGINE=VALUE/);
  assertThrows(() => parseCommand(["init", "--model", "=x"]), /--model takes ENGINE=VALUE/);
  assertThrows(() => parseCommand(["render"]), /render needs --out DIR/);
});
