/** The binary's permission set (deno.json `default`) denies what lychd must never do. */
import denoJson from "../deno.json" with { type: "json" };
import { EXIT } from "../lib/exit.ts";
import { permissionMessage } from "../lib/permissions.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { sandbox } from "./support/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("permissions: spawning other programs, writing elsewhere, other hosts and ports are denied", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-q", "-P", "--frozen", `${ROOT}tests/support/permission_probe.ts`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
  const result = JSON.parse(new TextDecoder().decode(r.stdout));
  assertDeep(result, {
    spawnOutsideList: "denied",
    writeOutsideFolders: "denied",
    readSecretFile: "denied",
    connectNonLoopback: "denied",
    listenOtherPortBeyondLoopback: "denied",
    readEnvOutsideList: "denied",
    // The control: what the set allows is allowed (systemctl exists on the test machines).
    allowedProgram: "allowed",
  });
});

Deno.test("permissions: a path outside the set is a lychd message an operator can act on, and nothing is written", async () => {
  const sb = await sandbox();
  const out = `/var/tmp/lychd-denied-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const r = await sb.run(["render", "--out", out]);
    assertEquals(r.code, EXIT.FAILED, r.stderr);
    // Deno's advice is for `deno run`, not for the binary.
    assert(!r.stderr.includes("--allow-"), r.stderr);
    assertMatch(
      r.stderr,
      /^lychd: lychd may not read \/var\/tmp\/lychd-denied-\w+\/\S+: it reads and writes files only under \/home, \/root, \/tmp, .*Use a path under your home folder or \/tmp/m,
    );
    assertEquals(await Deno.stat(out).then(() => true, () => false), false);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("permissions: the message's grant is deno.json's, for each kind Deno reports", () => {
  const grant = denoJson.permissions.default;
  assertMatch(permissionMessage('Requires write access to "/srv/x"'), /may not write \/srv\/x/);
  assertMatch(
    permissionMessage('Requires run access to "curl", run again with the --allow-run flag'),
    new RegExp(`may not run curl: it runs only ${grant.run.join(", ")} `),
  );
  assertMatch(
    permissionMessage('Requires net access to "10.0.0.1:80", run again with the --allow-net flag'),
    /may not connect to 10\.0\.0\.1:80: it connects only to 127\.0\.0\.1, 0\.0\.0\.0:8081/,
  );
  assertMatch(permissionMessage('Requires env access to "FOO"'), /environment variable FOO/);
  for (const m of ["Requires read access", 'Requires ffi access to "x"']) {
    assert(!permissionMessage(m).includes("--allow"), m);
  }
});
