/**
 * scripts/install.sh, for real, under dash (POSIX sh): a loopback HTTP server plays the release
 * host with fake release folders. Every failure must say why, exit non-zero and install nothing.
 */
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { freePort } from "./support/ports.ts";

const SCRIPT = new URL("../scripts/install.sh", import.meta.url).pathname;
const TARGET = "x86_64-unknown-linux-gnu";
const FAKE_BINARY = '#!/bin/sh\necho "lychd 9.9.9 (commit fake)"\n';

async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A release host: path -> body (missing paths are 404). */
function releaseServer(files: Record<string, string>) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const body = files[new URL(req.url).pathname];
    return body === undefined ? new Response("Not Found", { status: 404 }) : new Response(body);
  });
}

async function install(base: string, opts: { arch?: string; version?: string } = {}) {
  const tmp = await Deno.makeTempDir({ prefix: "lychd-install-" });
  // A fake uname on PATH decides the architecture the script sees.
  await Deno.mkdir(`${tmp}/bin`);
  await Deno.writeTextFile(
    `${tmp}/bin/uname`,
    `#!/bin/sh\ncase "$1" in -s) echo Linux ;; -m) echo ${opts.arch ?? "x86_64"} ;; esac\n`,
    { mode: 0o755 },
  );
  const r = await new Deno.Command("dash", {
    args: [SCRIPT],
    clearEnv: true,
    env: {
      PATH: `${tmp}/bin:/usr/bin:/bin`,
      HOME: tmp,
      LYCHD_BASE_URL: base,
      LYCHD_VERSION: opts.version ?? "v9.9.9",
      LYCHD_INSTALL_DIR: `${tmp}/dest`,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  let installed: string[] = [];
  try {
    installed = [...Deno.readDirSync(`${tmp}/dest`)].map((e) => e.name);
  } catch { /* not created */ }
  await Deno.remove(tmp, { recursive: true });
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr), installed };
}

const good = async () => ({
  [`/download/v9.9.9/lychd-${TARGET}`]: FAKE_BINARY,
  [`/download/v9.9.9/lychd-${TARGET}.sha256`]: `${await sha256(FAKE_BINARY)}  lychd-${TARGET}\n`,
});

Deno.test("install.sh: a good release installs, and the installed file runs", async () => {
  const server = releaseServer(await good());
  try {
    const r = await install(`http://127.0.0.1:${server.addr.port}`);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(
      r.stdout,
      /Installed lychd 9\.9\.9 \(commit fake\) to .*\/dest\/lychd \(sha256 verified\)/,
    );
    assertMatch(r.stdout, /Next: lychd doctor/);
    assertEquals(r.installed.join(), "lychd");
  } finally {
    await server.shutdown();
  }
});

const FAILURES: [
  string,
  (files: Record<string, string>) => void,
  { arch?: string; version?: string },
  RegExp,
][] = [
  [
    "a corrupted asset",
    (f) => (f[`/download/v9.9.9/lychd-${TARGET}`] += "tampered"),
    {},
    /checksum mismatch/,
  ],
  [
    "a wrong checksum",
    (f) => (f[`/download/v9.9.9/lychd-${TARGET}.sha256`] = `${"0".repeat(64)}  x\n`),
    {},
    /checksum mismatch/,
  ],
  [
    "a checksum file that is not one",
    (f) => (f[`/download/v9.9.9/lychd-${TARGET}.sha256`] = "<html>oops</html>"),
    {},
    /is not a sha256 checksum/,
  ],
  [
    "a missing .sha256",
    (f) => delete f[`/download/v9.9.9/lychd-${TARGET}.sha256`],
    {},
    /\.sha256: HTTP 404/,
  ],
  [
    "an unknown architecture",
    () => {},
    { arch: "riscv64" },
    /no lychd build for the architecture riscv64/,
  ],
  [
    "a missing asset for the architecture",
    () => {},
    { arch: "aarch64" },
    /lychd-aarch64-unknown-linux-gnu: HTTP 404/,
  ],
  [
    "a version that does not exist (404)",
    () => {},
    { version: "v0.0.0" },
    /could not download .*v0\.0\.0.*HTTP 404/,
  ],
];

for (const [name, mutate, opts, expected] of FAILURES) {
  Deno.test(`install.sh refuses ${name}, installing nothing`, async () => {
    const files = await good();
    mutate(files);
    const server = releaseServer(files);
    try {
      const r = await install(`http://127.0.0.1:${server.addr.port}`, opts);
      assert(r.code !== 0, "exit 0 on failure");
      assertMatch(r.stderr, expected);
      assertMatch(r.stderr, /nothing was installed/);
      assertEquals(r.installed.length, 0, `installed: ${r.installed}`);
    } finally {
      await server.shutdown();
    }
  });
}

Deno.test("install.sh refuses an unreachable server, installing nothing", async () => {
  const r = await install(`http://127.0.0.1:${freePort()}`);
  assert(r.code !== 0);
  assertMatch(r.stderr, /could not download .*: curl: \(7\)/);
  assertEquals(r.installed.length, 0);
});
