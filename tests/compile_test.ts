/**
 * The binary: `deno task compile` embeds every template and dashboard and bakes in exactly the
 * `default` permission set from deno.json (no prompts) and the commit. Checked without a working
 * runtime by compiling with DENORT_BIN pointing at deno itself (the output cannot run, but its
 * metadata is all there). With a real denort (env LYCHD_REAL_DENORT), the binary is also run.
 */
import denoJson from "../deno.json" with { type: "json" };
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function compile(denort: string, out: string) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write=/tmp",
      "--allow-run",
      "--allow-env",
      `${ROOT}scripts/compile.ts`,
      "--output",
      out,
    ],
    cwd: ROOT,
    env: { DENORT_BIN: denort, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

/** The JSON object that follows `"key":` in the binary's metadata. */
function metadataObject(binary: string, key: string): unknown {
  const at = binary.indexOf(`"${key}":{`);
  assert(at >= 0, `no ${key} in the binary's metadata`);
  let depth = 0;
  const start = binary.indexOf("{", at);
  for (let i = start; i < binary.length; i++) {
    if (binary[i] === "{") depth++;
    if (binary[i] === "}" && --depth === 0) return JSON.parse(binary.slice(start, i + 1));
  }
  throw new Error("unterminated metadata");
}

Deno.test("compile: every template and dashboard embedded, the default permission set baked in", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lychd-compile-" });
  try {
    const r = await compile(Deno.execPath(), `${dir}/lychd`);
    assertEquals(r.code, 0, r.stderr);
    const binary = new TextDecoder("latin1").decode(await Deno.readFile(`${dir}/lychd`));
    const embedded = new Set([...binary.matchAll(/"n":"([^"]+)"/g)].map((m) => m[1]));
    for (const dir of ["templates", "dashboards"]) {
      for await (const f of Deno.readDir(`${ROOT}${dir}`)) {
        assert(embedded.has(f.name), `${dir}/${f.name} is not embedded`);
      }
    }
    const perms = metadataObject(binary, "permissions") as Record<string, unknown>;
    const set = denoJson.permissions.default;
    assertDeep(perms.allow_read, set.read);
    assertDeep(perms.allow_write, set.write);
    assertDeep(perms.allow_run, set.run);
    assertDeep(perms.allow_net, set.net);
    assertDeep(perms.allow_env, set.env.allow);
    assertDeep(perms.ignore_env, set.env.ignore);
    // Deno.systemMemoryInfo: the host's available memory before a sleep at level 1.
    assertDeep(perms.allow_sys, set.sys);
    assertEquals(perms.allow_ffi, null);
    assertEquals(perms.prompt, false);
    // The gate relies on Deno's corrected request.signal (it aborts only when a client leaves).
    const unstable = metadataObject(binary, "unstable_config") as { features: string[] };
    assertDeep(unstable.features, denoJson.unstable);
    const env = metadataObject(binary, "env_vars_from_env_file") as Record<string, string>;
    assertMatch(env.LYCHD_COMMIT, /^[0-9a-f]{7,}(-dirty)?$|^unknown$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const REAL_DENORT = Deno.env.get("LYCHD_REAL_DENORT");

Deno.test({
  name: "compile: the binary runs (--version, init --dry-run) and its permissions deny the rest",
  ignore: !REAL_DENORT,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lychd-compile-" });
    try {
      assertEquals((await compile(REAL_DENORT!, `${dir}/lychd`)).code, 0);
      const run = async (args: string[], env: Record<string, string> = {}) => {
        const r = await new Deno.Command(`${dir}/lychd`, {
          args,
          env: { HOME: dir, ...env },
          clearEnv: true,
          stdout: "piped",
          stderr: "piped",
        })
          .output();
        const d = new TextDecoder();
        return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
      };
      assertMatch((await run(["--version"])).stdout, /^lychd \d+\.\d+\.\d+ \(commit [0-9a-f]+/);
      const dry = await run(["init", "--dry-run"]);
      assertEquals(dry.code, 0, dry.stderr);
      assertMatch(dry.stdout, /create +\S+soulstone-vllm\.container/);
      // A render outside the folders it may write is denied by the binary's own permissions.
      const denied = await run(["render", "--out", "/var/tmp/lychd-denied"]);
      assertEquals(denied.code, 1);
      assertMatch(denied.stderr, /permission set does not allow this/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
