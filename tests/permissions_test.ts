/** The binary's permission set (deno.json `default`) denies what lychd must never do. */
import { assertDeep, assertEquals } from "./support/assert.ts";

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
    connectOtherLoopbackPort: "denied",
    readEnvOutsideList: "denied",
    // The control: what the set allows is allowed (systemctl exists on the test machines).
    allowedProgram: "allowed",
  });
});
