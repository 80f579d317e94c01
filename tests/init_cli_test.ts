/** `lychd init` and `lychd render` end to end: the real CLI, real files, fake systemctl/podman. */
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { EXIT } from "../lib/exit.ts";
import { lychdArgs, sandbox, testEnv } from "./support/cli.ts";

const UNITS = ".config/containers/systemd";
const DATA = ".local/share/lychd";
const CONFIG = ".config/lychd/lychd.yaml";

/**
 * Something answering on 127.0.0.1:8081 for as long as the test needs: a listener of the test's
 * own, or whatever on this machine holds the port already (to init, both are a gate that
 * answers). The fake systemctl starts nothing, so without this what init sees on 8081 would
 * depend on the machine the test runs on.
 */
function answerOn8081(): { close(): void } {
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname: "127.0.0.1", port: 8081 });
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) return { close() {} };
    throw e;
  }
  (async () => {
    for await (const conn of listener) conn.close();
  })().catch(() => {/* closed */});
  return { close: () => listener.close() };
}

Deno.test("init writes every file, reloads systemd once, and a re-run changes nothing", async () => {
  const sb = await sandbox();
  const gate = answerOn8081();
  try {
    const first = await sb.run(["init"]);
    assertEquals(first.code, 0, first.stderr);
    const tree = await sb.tree();
    for (
      const f of [
        "soulstone-vllm.container",
        "soulstone-sglang.container",
        "soulstone-llama.container",
        "harvester.container",
        "scribe.container",
      ]
    ) assert(`${UNITS}/${f}` in tree, `${f} missing`);
    for (
      const f of [
        "prometheus/prometheus.yml",
        "prometheus/rules/lychd.rules.yml",
        "grafana/provisioning/datasources/lychd.yaml",
        "grafana/provisioning/dashboards/lychd.yaml",
        "grafana/dashboards/soulstone-vllm.json",
        "grafana/dashboards/soulstone-sglang.json",
        "grafana/dashboards/soulstone-llama.json",
        "grafana/dashboards/lychd-vessel.json",
        "manifest.json",
        "grafana-admin-password",
      ]
    ) assert(`${DATA}/${f}` in tree, `${f} missing`);
    // The gate, lychd itself on 8081: a plain user unit next to the Quadlet ones.
    assertMatch(tree[".config/systemd/user/lychd-gate.service"], /^ExecStart=.* gate --config /m);
    assertMatch(tree[CONFIG], /engines:\n {2}- vllm\n {2}- sglang\n {2}- llama/);
    assertDeep(await sb.calls(), [
      "podman secret inspect lychd-grafana-admin",
      `podman secret create lychd-grafana-admin ${sb.home}/${DATA}/grafana-admin-password`,
      "systemctl --user daemon-reload",
      // The watchers run whichever engine serves: init starts them (their images are here).
      "systemctl --user show --timestamp=us+utc -p Id,ActiveState soulstone-vllm.service soulstone-sglang.service soulstone-llama.service",
      "systemctl --user show --timestamp=us+utc -p Id,ActiveState harvester.service scribe.service",
      "podman image exists docker.io/prom/prometheus:v3.5.0",
      "systemctl --user start harvester.service",
      "podman image exists docker.io/grafana/grafana:12.2.0",
      "systemctl --user start scribe.service",
      "systemctl --user show --timestamp=us+utc -p Id,ActiveState,UnitFileState lychd-gate.service",
      "systemctl --user enable lychd-gate.service",
      "systemctl --user start lychd-gate.service",
      // 8081 answers (answerOn8081): init has waited for the gate and asks systemd nothing more.
      // What it says when nothing answers: gate_units_test.ts, under the fake systemd.
    ]);
    assertMatch(
      first.stdout,
      /Started lychd-gate\.service: lychd holds http:\/\/127\.0\.0\.1:8081, the engines answer on 127\.0\.0\.1:18081/,
    );
    assertEquals(first.stderr, "");
    assertMatch(first.stdout, /Next: lychd pull, then lychd swap vllm/);

    const second = await sb.run(["init"]);
    assertEquals(second.code, 0, second.stderr);
    assertMatch(second.stdout, /0 created, 0 updated, 15 unchanged/);
    assertMatch(second.stdout, /Nothing changed, so systemd was not reloaded/);
    assertDeep(await sb.tree(), tree);
    const calls = await sb.calls();
    assertEquals(calls.filter((c) => c.includes("daemon-reload")).length, 1);
    assertEquals(calls.filter((c) => c.includes("secret create")).length, 1);
  } finally {
    gate.close();
    await sb.cleanup();
  }
});

Deno.test("init: file modes are exact whatever the umask; secrets stay out of every file", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init", "--hf-token-secret", "my-hf"])).code, 0);
    const mode = async (p: string) => (await Deno.stat(`${sb.home}/${p}`)).mode! & 0o777;
    assertEquals(await mode(`${UNITS}/soulstone-vllm.container`), 0o644);
    assertEquals(await mode(`${DATA}/prometheus/prometheus.yml`), 0o644);
    assertEquals(await mode(CONFIG), 0o600);
    assertEquals(await mode(`${DATA}/manifest.json`), 0o600);
    assertEquals(await mode(`${DATA}/grafana-admin-password`), 0o600);
    const password = await sb.read(`${DATA}/grafana-admin-password`);
    assert(password.length >= 20);
    for (const [path, text] of Object.entries(await sb.tree())) {
      if (path.endsWith("grafana-admin-password")) continue;
      assert(!text.includes(password), `${path} contains the Grafana password`);
    }
    assertMatch(
      await sb.read(`${UNITS}/soulstone-vllm.container`),
      /^Secret=my-hf,type=env,target=HF_TOKEN$/m,
    );
    // Nor in anything lychd prints: dry-run diffs, status, errors, a second init.
    const outputs = [
      await sb.run(["init", "--dry-run", "--model", "vllm=org/other"]),
      await sb.run(["status", "--json"]),
      await sb.run(["init", "--model", "vllm=bad\nvalue"]),
      await sb.run(["init"]),
    ];
    for (const o of outputs) {
      assert(!(o.stdout + o.stderr).includes(password), "the password was printed");
    }
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init --dry-run writes nothing and shows create, then update with a diff, then unchanged", async () => {
  const sb = await sandbox();
  try {
    const dry = await sb.run(["init", "--dry-run"]);
    assertEquals(dry.code, 0, dry.stderr);
    assertMatch(dry.stdout, /^create +\S+soulstone-vllm\.container$/m);
    assertMatch(dry.stdout, /^ +\+Conflicts=soulstone-llama\.service soulstone-sglang\.service$/m);
    assertMatch(dry.stdout, /15 to create, 0 to update, 0 unchanged, 0 to remove, 0 conflicts/);
    // What init would do beyond its files names the gate it would start (the default layout).
    assertMatch(
      dry.stdout,
      /start the harvester and scribe, and enable and start lychd-gate\.service /,
    );
    assertDeep(await sb.tree(), {});
    assertDeep(await sb.calls(), []);

    assertEquals((await sb.run(["init"])).code, 0);
    const before = await sb.tree();
    const dry2 = await sb.run([
      "init",
      "--dry-run",
      "--model",
      "vllm=meta-llama/Llama-3.1-8B-Instruct",
    ]);
    assertEquals(dry2.code, 0, dry2.stderr);
    assertMatch(dry2.stdout, /^update +\S+soulstone-vllm\.container$/m);
    assertMatch(dry2.stdout, /^ +-Exec=Qwen\/Qwen2\.5-7B-Instruct --host/m);
    assertMatch(dry2.stdout, /^ +\+Exec=meta-llama\/Llama-3\.1-8B-Instruct --host/m);
    assertMatch(dry2.stdout, /^unchanged +\S+soulstone-llama\.container$/m);
    assertMatch(dry2.stdout, /^update +\S+lychd\.yaml$/m);
    assertDeep(await sb.tree(), before);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init: flags override lychd.yaml, which keeps the user's comments", async () => {
  const sb = await sandbox();
  try {
    await Deno.mkdir(`${sb.home}/.config/lychd`, { recursive: true });
    await Deno.writeTextFile(
      `${sb.home}/${CONFIG}`,
      "# my GPU box\nengines: [llama, vllm]  # llama first\ngpu: cpu\ncartridges:\n  vllm:\n    gpu: nvidia\n",
    );
    const r = await sb.run(["init", "--model", "llama=/models/tiny.gguf"]);
    assertEquals(r.code, 0, r.stderr);
    const config = await sb.read(CONFIG);
    assertMatch(config, /^# my GPU box$/m);
    assertMatch(config, /# llama first/);
    assertMatch(config, /llama:\n +model: \/models\/tiny\.gguf/);
    const llama = await sb.read(`${UNITS}/soulstone-llama.container`);
    assertMatch(llama, /^Image=ghcr\.io\/ggml-org\/llama\.cpp:server-b10587$/m);
    assertMatch(llama, /^WantedBy=default\.target$/m);
    assertMatch(
      await sb.read(`${UNITS}/soulstone-vllm.container`),
      /^AddDevice=nvidia\.com\/gpu=all$/m,
    );
    // sglang is not configured: no unit, no dashboard.
    assert(!((`${UNITS}/soulstone-sglang.container`) in await sb.tree()));
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init refuses to overwrite an edited unit or a foreign file; --force replaces them", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init"])).code, 0);
    const unit = `${sb.home}/${UNITS}/soulstone-vllm.container`;
    await Deno.writeTextFile(unit, (await Deno.readTextFile(unit)) + "# my tweak\n");
    await Deno.writeTextFile(`${sb.home}/${DATA}/grafana/dashboards/soulstone-llama.json`, "{}\n");
    await Deno.remove(`${sb.home}/${DATA}/manifest.json`);
    await Deno.writeTextFile(
      `${sb.home}/${DATA}/manifest.json`,
      JSON.stringify({
        version: 1,
        files: { [unit]: ["0".repeat(64)] },
      }),
    );
    const before = await sb.tree();
    const r = await sb.run(["init", "--model", "vllm=org/other"]);
    assertEquals(r.code, 1);
    assertMatch(r.stderr, /soulstone-vllm\.container: edited since lychd wrote it/);
    assertMatch(r.stderr, /soulstone-llama\.json: not written by lychd/);
    assertMatch(r.stderr, /Nothing was written.*--force/s);
    assertDeep(await sb.tree(), before);

    const forced = await sb.run(["init", "--force", "--model", "vllm=org/other"]);
    assertEquals(forced.code, 0, forced.stderr);
    assertMatch(await Deno.readTextFile(unit), /^Exec=org\/other /m);
    assert(!(await Deno.readTextFile(unit)).includes("# my tweak"));
    const again = await sb.run(["init"]);
    assertEquals(again.code, 0, again.stderr);
    assertMatch(again.stdout, /Nothing changed/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init: dropping an engine removes its unit and dashboard, but keeps an edited one", async () => {
  const sb = await sandbox();
  try {
    assertEquals((await sb.run(["init"])).code, 0);
    const sglang = `${sb.home}/${UNITS}/soulstone-sglang.container`;
    await Deno.writeTextFile(sglang, (await Deno.readTextFile(sglang)) + "# mine now\n");
    const r = await sb.run(["init", "--engines", "vllm,llama"]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(
      r.stdout,
      /^kept +\S+soulstone-sglang\.container \(edited since lychd wrote it\)$/m,
    );
    assertMatch(r.stdout, /^removed +\S+soulstone-sglang\.json$/m);
    const tree = await sb.tree();
    assert(`${UNITS}/soulstone-sglang.container` in tree);
    assert(!(`${DATA}/grafana/dashboards/soulstone-sglang.json` in tree));
    assertMatch(tree[`${UNITS}/soulstone-vllm.container`], /^Conflicts=soulstone-llama\.service$/m);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init: systemctl missing or failing leaves the files written and says what to run", async () => {
  const sb = await sandbox();
  try {
    await sb.fake("systemctl", 1);
    const r = await sb.run(["init"]);
    assertEquals(r.code, EXIT.NOT_RELOADED);
    assertMatch(
      r.stderr,
      /files are written, but `systemctl --user daemon-reload` failed \(systemctl daemon-reload failed: exit 1/,
    );
    assertMatch(r.stderr, /Run it by hand/);
    assert(`${UNITS}/scribe.container` in await sb.tree());
    await Deno.remove(`${sb.bin}/systemctl`);
    await Deno.remove(`${sb.bin}/podman`);
    const r2 = await sb.run(["init", "--model", "vllm=org/x"], { PATH: `${sb.bin}:/nonexistent` });
    assertEquals(r2.code, EXIT.NOT_RELOADED);
    assertMatch(r2.stderr, /podman not found.*podman secret create lychd-grafana-admin/s);
    assertMatch(r2.stderr, /systemctl not found/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init --system writes root locations (checked with --dry-run: nothing on this host changes)", async () => {
  const sb = await sandbox();
  try {
    const r = await sb.run(["init", "--system", "--dry-run", "--config", `${sb.home}/lychd.yaml`]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stdout, /^create +\/etc\/containers\/systemd\/soulstone-vllm\.container$/m);
    assertMatch(r.stdout, /^create +\/var\/lib\/lychd\/prometheus\/prometheus\.yml$/m);
    assertMatch(r.stdout, /^ +\+WantedBy=multi-user\.target$/m);
    assertMatch(r.stdout, /^ +\+Volume=\/var\/lib\/lychd\/models:\/root\/\.cache\/huggingface:z$/m);
    assertMatch(r.stdout, /run `systemctl daemon-reload`/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("render --out writes the whole set into one folder and nothing else", async () => {
  const sb = await sandbox();
  try {
    const out = `${sb.home}/out`;
    const r = await sb.run(["render", "--out", out, "--engines", "llama,vllm"]);
    assertEquals(r.code, 0, r.stderr);
    const files = Object.keys(await sb.tree()).sort();
    assertDeep(files, [
      "out/.lychd-manifest.json",
      "out/data/grafana/dashboards/lychd-vessel.json",
      "out/data/grafana/dashboards/soulstone-llama.json",
      "out/data/grafana/dashboards/soulstone-vllm.json",
      "out/data/grafana/provisioning/dashboards/lychd.yaml",
      "out/data/grafana/provisioning/datasources/lychd.yaml",
      "out/data/prometheus/prometheus.yml",
      "out/data/prometheus/rules/lychd.rules.yml",
      "out/lychd.yaml",
      "out/quadlet/harvester.container",
      "out/quadlet/scribe.container",
      "out/quadlet/soulstone-llama.container",
      "out/quadlet/soulstone-vllm.container",
      "out/systemd/lychd-gate.service",
    ]);
    assertDeep(await sb.calls(), []);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("--help, <command> --help and --version", async () => {
  const sb = await sandbox();
  try {
    const help = await sb.run(["--help"]);
    assertEquals(help.code, 0);
    assertMatch(help.stdout, /Usage: lychd <command>/);
    const initHelp = await sb.run(["init", "--help"]);
    assertMatch(initHelp.stdout, /--dry-run/);
    const version = await sb.run(["--version"]);
    assertMatch(version.stdout, /^lychd \d+\.\d+\.\d+ \(commit dev, deno 2\.\d+\.\d+\)$/m);
    const bad = await sb.run(["init", "--modle", "x"]);
    assertEquals(bad.code, 2);
    assertMatch(bad.stderr, /unknown option --modle \(did you mean "--model"\?\)/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init waits for another lychd holding the lock (a real flock), then proceeds", async () => {
  const sb = await sandbox();
  try {
    const holder = await holdLock(`${sb.home}/${DATA}/lychd.lock`);
    const init = new Deno.Command(Deno.execPath(), {
      args: lychdArgs(["init"]),
      clearEnv: true,
      env: testEnv(sb),
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Conditions, not the clock: init says it waits, is still waiting after that, and finishes
    // only once the holder lets go.
    const stderr = init.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let said = "";
    while (!/waiting for it to finish/.test(said)) {
      const { value, done } = await stderr.read();
      assert(!done, `init ended without waiting: ${said}`);
      said += value;
    }
    assertMatch(
      said,
      /Another lychd command \(init or swap\) is running; waiting for it to finish/,
    );
    const early = await Promise.race([
      init.status.then(() => "init finished while the lock was held"),
      new Promise<string>((r) => setTimeout(() => r(""), 300)),
    ]);
    assertEquals(early, "");
    assertEquals(await present(`${sb.home}/${UNITS}/soulstone-vllm.container`), false);
    await holder.release();
    while (!(await stderr.read()).done) { /* drain */ }
    const [status, out] = await Promise.all([init.status, new Response(init.stdout).text()]);
    assertEquals(status.code, 0, said);
    assertMatch(out, /created/);
    assertEquals(await present(`${sb.home}/${UNITS}/soulstone-vllm.container`), true);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init: file modes are exact under umask 000 and 077", async () => {
  for (const umask of ["000", "077"]) {
    const sb = await sandbox();
    try {
      const r = await new Deno.Command("sh", {
        args: ["-c", `umask ${umask}; exec "$0" "$@"`, Deno.execPath(), ...lychdArgs(["init"])],
        clearEnv: true,
        env: testEnv(sb),
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
      const mode = async (p: string) => (await Deno.stat(`${sb.home}/${p}`)).mode! & 0o777;
      assertEquals(await mode(`${UNITS}/soulstone-vllm.container`), 0o644, `umask ${umask}`);
      assertEquals(
        await mode(`${DATA}/grafana/dashboards/lychd-vessel.json`),
        0o644,
        `umask ${umask}`,
      );
      assertEquals(await mode(CONFIG), 0o600, `umask ${umask}`);
      assertEquals(await mode(`${DATA}/grafana-admin-password`), 0o600, `umask ${umask}`);
      // Folders the containers read through: enterable by others, whatever the umask.
      assertEquals(await mode(`${DATA}/prometheus/rules`), 0o755, `umask ${umask}`);
      assertEquals(await mode(`${DATA}/grafana/dashboards`), 0o755, `umask ${umask}`);
    } finally {
      await sb.cleanup();
    }
  }
});

Deno.test("init: a lock held by a process that was SIGKILLed is free at once (flock)", async () => {
  const sb = await sandbox();
  try {
    const holder = await holdLock(`${sb.home}/${DATA}/lychd.lock`);
    holder.process.kill("SIGKILL");
    await holder.release();
    const r = await sb.run(["init"]);
    assertEquals(r.code, 0, r.stderr);
    assert(!r.stderr.includes("waiting"), "init waited for a dead process");
  } finally {
    await sb.cleanup();
  }
});

/** Another process holding lychd's lock (an flock) until `release`; resolves once it holds it. */
async function holdLock(
  file: string,
): Promise<{ process: Deno.ChildProcess; release: () => Promise<void> }> {
  await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const f = await Deno.open(${JSON.stringify(file)}, {read: true, write: true, create: true});
       await f.lock(true); console.log("locked");
       for await (const _ of Deno.stdin.readable) { /* hold until stdin closes */ }`,
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await reader.read()).value?.trim(), "locked");
  reader.releaseLock();
  holder.stdout.cancel().catch(() => {});
  return {
    process: holder,
    release: async () => {
      await holder.stdin.close().catch(() => {});
      await holder.status;
    },
  };
}

async function present(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("relative --config and --out are taken from the working folder", async () => {
  const sb = await sandbox();
  try {
    await Deno.writeTextFile(`${sb.home}/my.yaml`, "engines: [llama]\n");
    const r = await new Deno.Command(Deno.execPath(), {
      args: lychdArgs(["render", "--out", "preview", "--config", "./my.yaml"]),
      cwd: sb.home,
      clearEnv: true,
      env: testEnv(sb),
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
    const files = Object.keys(await sb.tree());
    assert(files.includes("preview/quadlet/soulstone-llama.container"), files.join("\n"));
    assert(
      !files.includes("preview/quadlet/soulstone-vllm.container"),
      "the relative --config was not read",
    );
  } finally {
    await sb.cleanup();
  }
});
