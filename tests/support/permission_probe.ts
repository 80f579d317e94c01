/**
 * Run under deno.json's default permission set (`deno run -P`), the binary's exact set: tries
 * what lychd must never do and prints, as JSON, which attempts the permission system denied.
 */
async function attempt(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return "allowed";
  } catch (e) {
    return e instanceof Deno.errors.NotCapable ? "denied" : `error: ${(e as Error).name}`;
  }
}

console.log(JSON.stringify({
  spawnOutsideList: await attempt(() => new Deno.Command("sh", { args: ["-c", "true"] }).output()),
  writeOutsideFolders: await attempt(() =>
    Deno.writeTextFile("/var/tmp/lychd-permission-probe", "x")
  ),
  readSecretFile: await attempt(() => Deno.readTextFile("/etc/shadow")),
  // .invalid never resolves: the permission check comes first, and nothing leaves the machine.
  connectNonLoopback: await attempt(() => fetch("http://lychd-probe.invalid/")),
  // The gate may listen on every address, on 8081 only.
  listenOtherPortBeyondLoopback: await attempt(() => {
    Deno.listen({ hostname: "0.0.0.0", port: 18999 }).close();
    return Promise.resolve();
  }),
  readEnvOutsideList: await attempt(() => Promise.resolve(Deno.env.get("AWS_SECRET_ACCESS_KEY"))),
  allowedProgram: await attempt(() =>
    new Deno.Command("systemctl", { args: ["--version"] }).output()
  ),
}));
