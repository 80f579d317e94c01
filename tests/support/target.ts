/**
 * Where the end-to-end tests run lychd: a real systemd host with Quadlet and Podman, in one of
 * two forms.
 *   - "sandbox": a throwaway systemd guest booted by the `sdsandbox` tool (found at
 *     $SDSANDBOX, or in the sandbox tools' folder beside the checkout; needs root). Picked
 *     whenever the tool is there. With mode "user", the guest has an unprivileged user with its
 *     own systemd user manager and rootless Podman.
 *   - "host": this machine's own systemd, only when asked with LYCHD_E2E=host (e.g. a CI runner,
 *     whose systemd is PID 1). System mode needs root, user mode a user with a running user
 *     manager (linger). It refuses a host where lychd is already set up in that mode or a
 *     soulstone runs, and removes what the test set up when it closes.
 * LYCHD_E2E_BIN=PATH runs a compiled lychd binary instead of `deno run main.ts`, and
 * LYCHD_E2E_MODES=system (or user) runs one mode only.
 * When neither form can run, the tests are skipped loudly, except in CI (CI=true), where that
 * is a failure unless LYCHD_NO_E2E=1 says the CI deliberately runs no end-to-end tests.
 */
import { IN_CI } from "./tools.ts";
import { assertEquals } from "./assert.ts";
import type { Outcome } from "../e2e/load.ts";

export const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const SDSANDBOX = Deno.env.get("SDSANDBOX") ?? `${ROOT}/../shared/sandbox/sdsandbox`;
export const DENO = Deno.execPath();
const ASKED = Deno.env.get("LYCHD_E2E") ?? "";
const BINARY = Deno.env.get("LYCHD_E2E_BIN") ?? "";
/** The modes to run (LYCHD_E2E_MODES=system,user by default); a run as root on a host picks one. */
const MODES = (Deno.env.get("LYCHD_E2E_MODES") ?? "system,user").split(",");
/** The unprivileged user a sandbox guest gets for user mode (it exists only in the guest). */
const SANDBOX_USER = "lychde2e";

export type Mode = "system" | "user";

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ImageSpec {
  /** The program the image runs, copied with every library `ldd` lists for it. */
  exe: string;
  /** Extra files, [source on this machine, path in the image]. */
  files?: [string, string][];
  /** Dockerfile-style instructions: ENV, ENTRYPOINT, ... */
  changes?: string[];
}

export interface Target {
  where: "sandbox" | "host";
  mode: Mode;
  /** The operator's home (root's in system mode). */
  home: string;
  /** Run a program as the operator (root in system mode, the user in user mode). */
  run(cmd: string[], stdin?: string): Promise<Run>;
  /** lychd as the operator, as the tests' CLI runs it (or the compiled binary). */
  lychd(...args: string[]): Promise<Run>;
  /** The argv that runs lychd as the operator (to wrap it, e.g. in `env -u VAR`). */
  lychdCommand(...args: string[]): string[];
  /** The same, started and left running (stdout and stderr piped), to be signalled. */
  spawnLychd(...args: string[]): Deno.ChildProcess;
  /** Build an image from a program on this machine, in the operator's Podman storage. */
  image(name: string, spec: ImageSpec): Promise<string>;
  /** Tear down: the guest, or on a host everything lychd and the test set up. */
  close(): Promise<void>;
}

function where(): "sandbox" | "host" | null {
  if (ASKED === "host") return "host";
  if (Deno.env.get("SDSANDBOX_GUEST") === "1") return null; // no guest inside a guest
  try {
    Deno.statSync(SDSANDBOX);
    return "sandbox";
  } catch {
    return null;
  }
}

function isRoot(): boolean {
  const id = new Deno.Command("id", { args: ["-u"], stdout: "piped" }).outputSync();
  return new TextDecoder().decode(id.stdout).trim() === "0";
}

/** `ignore` for Deno.test: true (with a loud message) if no target can run `mode` here. */
export function e2eUnavailable(mode: Mode = "system"): boolean {
  if (!MODES.includes(mode)) {
    console.error(
      `\n!!! not running the ${mode}-mode end-to-end tests: LYCHD_E2E_MODES=${MODES}\n`,
    );
    return true;
  }
  const w = where();
  let reason: string | null = null;
  if (w === null) {
    reason = `no ${SDSANDBOX}, and LYCHD_E2E=host was not given`;
  } else if (w === "sandbox" && !isRoot()) {
    reason = "the systemd sandbox needs root";
  } else if (w === "host" && mode === "system" && !isRoot()) {
    reason = "system mode on this host needs root";
  } else if (w === "host" && mode === "user" && isRoot()) {
    reason = "user mode on this host needs an unprivileged user (with linger)";
  }
  if (!reason) return false;
  if (IN_CI && Deno.env.get("LYCHD_NO_E2E") !== "1") {
    throw new Error(`the end-to-end tests cannot run (${reason}); CI must run them`);
  }
  console.error(`\n!!! SKIPPING end-to-end tests (${mode} mode): ${reason}\n`);
  return true;
}

async function exec(program: string, args: string[], stdin?: string, cwd = ROOT): Promise<Run> {
  const child = new Deno.Command(program, {
    args,
    cwd,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const r = await child.output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

function spawn(program: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(program, { args, cwd: ROOT, stdout: "piped", stderr: "piped" }).spawn();
}

function must(r: Run, what: string): string {
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** The sandbox tool itself (up, exec, image, down...). */
export function sdsandbox(args: string[], stdin?: string): Promise<Run> {
  return exec(SDSANDBOX, args, stdin);
}

function lychdArgv(denoDir: string | null, args: string[]): string[] {
  if (BINARY) return [BINARY, ...args];
  const env = denoDir ? ["env", `DENO_DIR=${denoDir}`] : [];
  return [...env, DENO, "run", "-q", "-P", "--frozen", `${ROOT}/main.ts`, ...args];
}

/**
 * Open a target for `mode`. `privateDirs`: folders the test writes outside the operator's home
 * (/var/lib/lychd, /etc/lychd, a model folder), private to a sandbox guest; on a host they
 * must not exist yet and are removed again by close().
 */
export async function openTarget(mode: Mode, privateDirs: string[] = []): Promise<Target> {
  const lock = await openLockFile(TARGET_LOCK);
  await lock.lock(true);
  try {
    const target = where() === "host"
      ? await openHost(mode, privateDirs)
      : await openSandbox(mode, privateDirs);
    return {
      ...target,
      async close() {
        try {
          await target.close();
        } finally {
          lock.close();
        }
      },
    };
  } catch (e) {
    lock.close();
    throw e;
  }
}

/**
 * Held while a test file has its target: the sandbox has one guest (`sdsandbox up` takes down
 * any other), a host one systemd, and `deno test --parallel` runs test files side by side. An
 * flock, so it is let go when its holder ends, however it ends.
 */
const TARGET_LOCK = "/tmp/lychd-e2e-target.lock";

/** Read-only is enough for an flock, and lets another user lock a file root created. */
async function openLockFile(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return await Deno.open(path, { create: true, write: true, mode: 0o644 });
}

async function openSandbox(mode: Mode, privateDirs: string[]): Promise<Target> {
  const up = await sdsandbox([
    "up",
    ...privateDirs.flatMap((d) => ["--private", d]),
    ...(mode === "user" ? ["--user", SANDBOX_USER] : []),
  ]);
  must(up, "sdsandbox up");
  const user = mode === "user";
  const home = user ? `/home/${SANDBOX_USER}` : "/root";
  const execArgs = (cmd: string[]) => [
    "exec",
    ...(user ? ["--user", SANDBOX_USER] : []),
    "--cwd",
    ROOT,
    "--",
    ...cmd,
  ];
  const run = (cmd: string[], stdin?: string) => sdsandbox(execArgs(cmd), stdin);
  let denoDir: string | null = null;
  if (user && !BINARY) {
    // Deno needs lychd's npm packages in a cache the user can write: a copy of root's.
    const shared = `/tmp/lychd-e2e-denodir`;
    const info = JSON.parse(must(await exec(DENO, ["info", "--json"]), "deno info"));
    must(
      await exec("sh", [
        "-c",
        `rm -rf ${shared} && cp -a "$0" ${shared} && chmod -R a+rX ${shared}`,
        info.denoDir,
      ]),
      "copying DENO_DIR",
    );
    denoDir = `${home}/.cache/deno`;
    must(
      await run(["sh", "-c", `mkdir -p ~/.cache && cp -r ${shared} ${denoDir}`]),
      "DENO_DIR for the user",
    );
  }
  return {
    where: "sandbox",
    mode,
    home,
    run,
    lychd: (...args) => run(lychdArgv(denoDir, args)),
    lychdCommand: (...args) => lychdArgv(denoDir, args),
    spawnLychd: (...args) => spawn(SDSANDBOX, execArgs(lychdArgv(denoDir, args))),
    async image(name, spec) {
      must(
        await sdsandbox([
          "image",
          name,
          "--from-host",
          spec.exe,
          ...(spec.files ?? []).flatMap(([src, dst]) => ["--file", `${src}:${dst}`]),
          ...(spec.changes ?? []).flatMap((c) => ["--change", c]),
        ]),
        `sdsandbox image ${name}`,
      );
      if (user) must(await sdsandbox(["user-image", name]), `sdsandbox user-image ${name}`);
      return name;
    },
    async close() {
      must(await sdsandbox(["down"]), "sdsandbox down");
    },
  };
}

async function openHost(mode: Mode, privateDirs: string[]): Promise<Target> {
  const home = Deno.env.get("HOME")!;
  const scope = mode === "user" ? ["--user"] : [];
  const manifest = mode === "user"
    ? `${Deno.env.get("XDG_DATA_HOME") ?? `${home}/.local/share`}/lychd/manifest.json`
    : "/var/lib/lychd/manifest.json";
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  if (await exists(manifest)) {
    throw new Error(`refusing to run on this host: lychd is set up here (${manifest})`);
  }
  const running = await exec("systemctl", [
    ...scope,
    "list-units",
    "--no-legend",
    "--plain",
    "soulstone-*",
  ]);
  if (running.stdout.trim()) {
    throw new Error(`refusing to run on this host: soulstones are loaded:\n${running.stdout}`);
  }
  // Folders the test writes: absent or empty (a mount point) here, and emptied again by close().
  // (Through programs: the tests' own permissions write only to /tmp.)
  const created: string[] = [];
  for (const d of privateDirs) {
    if (!(await exists(d))) {
      must(await exec("mkdir", ["-p", d]), `mkdir ${d}`);
      created.push(d);
    } else if ((await Array.fromAsync(Deno.readDir(d))).length > 0) {
      throw new Error(`refusing to run on this host: ${d} is not empty`);
    }
  }
  const run = (cmd: string[], stdin?: string) => exec(cmd[0], cmd.slice(1), stdin);
  const images: string[] = [];
  const target: Target = {
    where: "host",
    mode,
    home,
    run,
    lychd: (...args) => run(lychdArgv(null, args)),
    lychdCommand: (...args) => lychdArgv(null, args),
    spawnLychd: (...args) => {
      const [program, ...rest] = lychdArgv(null, args);
      return spawn(program, rest);
    },
    async image(name, spec) {
      await importImage(name, spec);
      images.push(name);
      return name;
    },
    async close() {
      // lychd's own uninstall removes its units, containers, volumes and secrets; --force takes
      // the lychd.yaml the test wrote too.
      const flags = mode === "system" ? ["--system"] : [];
      await target.lychd("uninstall", ...flags, "--purge", "--force");
      await exec("systemctl", [...scope, "daemon-reload"]);
      for (const i of images) await exec("podman", ["rmi", "-f", i]);
      for (const d of privateDirs) {
        must(
          await exec("sh", [
            "-c",
            created.includes(d) ? 'rm -rf "$0"' : 'find "$0" -mindepth 1 -delete',
            d,
          ]),
          `cleaning ${d}`,
        );
      }
    },
  };
  return target;
}

/**
 * A minimal image, as `sdsandbox image` makes one: the program at its own path, the libraries
 * `ldd` lists, the extra files, /etc/passwd and /etc/group, and /tmp; imported with
 * `podman import` (no registry needed).
 */
async function importImage(name: string, spec: ImageSpec): Promise<void> {
  const ctx = await Deno.makeTempDir({ prefix: "lychd-e2e-image-" });
  try {
    const put = async (src: string, dst: string) => {
      await Deno.mkdir(`${ctx}${dst.slice(0, dst.lastIndexOf("/"))}`, { recursive: true });
      await Deno.copyFile(await Deno.realPath(src), `${ctx}${dst}`);
      await Deno.chmod(`${ctx}${dst}`, (await Deno.stat(src)).mode! & 0o777);
    };
    await put(spec.exe, spec.exe);
    const ldd = must(await exec("ldd", [spec.exe]), `ldd ${spec.exe}`);
    for (const m of ldd.matchAll(/(\/\S+) \(0x/g)) await put(m[1], m[1]);
    for (const [src, dst] of spec.files ?? []) await put(src, dst);
    await Deno.mkdir(`${ctx}/etc`, { recursive: true });
    await Deno.writeTextFile(
      `${ctx}/etc/passwd`,
      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    await Deno.writeTextFile(`${ctx}/etc/group`, "root:x:0:\nnogroup:x:65534:\n");
    await Deno.mkdir(`${ctx}/tmp`);
    await Deno.chmod(`${ctx}/tmp`, 0o1777);
    const tar = `${ctx}.tar`;
    must(await exec("tar", ["-C", ctx, "-cf", tar, "."]), "tar");
    await exec("podman", ["rmi", "-f", name]);
    must(
      await exec("podman", [
        "import",
        ...(spec.changes ?? []).flatMap((c) => ["--change", c]),
        tar,
        name,
      ]),
      `podman import ${name}`,
    );
    await Deno.remove(tar);
  } finally {
    await Deno.remove(ctx, { recursive: true });
  }
}

/** The fake engine image (Deno + tests/e2e/fake_engine.ts). */
export function buildFakeEngineImage(
  target: Target,
  name = "localhost/lychd-fake-engine:1",
): Promise<string> {
  const deno = Deno.realPathSync(DENO);
  return target.image(name, {
    exe: deno,
    files: [[`${ROOT}/tests/e2e/fake_engine.ts`, "/app/engine.ts"]],
    changes: [
      "ENV DENO_NO_UPDATE_CHECK=1",
      "ENV DENO_DIR=/app/.deno",
      `ENTRYPOINT ["${deno}", "run", "--allow-net", "--allow-env", "--allow-read", "--allow-write", "/app/engine.ts"]`,
    ],
  });
}

/** A llama.cpp build (llama-server and tiny.gguf): LLAMA_CPP_DIR, or the one beside the checkout. */
export const LLAMA_DIR = Deno.env.get("LLAMA_CPP_DIR") ?? `${ROOT}/../shared/engines/llama.cpp`;
export const LLAMA_IMAGE = "localhost/lychd-real-llama-server:1";

/** `ignore` for a test of the real llama.cpp server: true (said loudly) if there is no build. */
export function llamaMissing(): boolean {
  try {
    Deno.statSync(`${LLAMA_DIR}/llama-server`);
    return false;
  } catch {
    console.error(`\n!!! SKIPPING the real llama.cpp e2e tests: ${LLAMA_DIR} not found\n`);
    return true;
  }
}

/** The real llama-server as an image, in the operator's storage. */
export async function buildLlamaImage(target: Target): Promise<string> {
  const server = await Deno.realPath(`${LLAMA_DIR}/llama-server`);
  return await target.image(LLAMA_IMAGE, { exe: server, changes: [`ENTRYPOINT ["${server}"]`] });
}

/**
 * lychd.yaml's `cartridges:` for two real llama.cpp engines on the same GGUF (in `modelDir`, the
 * model cache): the built-in llama and a custom one, alpha, both on `network`. A custom engine
 * cannot be told where to listen: on the host's network alpha's own args bind it to 127.0.0.1 at
 * the engine port (18081), in a network of its own to every address at 8080.
 */
export function twoLlamas(network: "host" | "private", modelDir: string): string {
  const [host, port] = network === "host" ? ["127.0.0.1", 18081] : ["0.0.0.0", 8080];
  return `cartridges:
  llama:
    image: ${LLAMA_IMAGE}
    model: ${modelDir}/tiny.gguf
    network: ${network}
    args: [--ctx-size, "2048"]
  alpha:
    image: ${LLAMA_IMAGE}
    network: ${network}
    port: ${port}
    model: alpha
    health_path: /health
    warmup: true
    args: [-m, /root/.cache/huggingface/tiny.gguf, --alias, alpha, --ctx-size, "2048",
           --host, ${host}, --port, "${port}", --metrics]
`;
}

/** A Prometheus image from this machine's own binary, to run the harvester unit. */
export function buildPrometheusImage(target: Target): Promise<string> {
  return target.image("localhost/lychd-prometheus:1", {
    exe: "/usr/bin/prometheus",
    changes: ['ENTRYPOINT ["/usr/bin/prometheus"]'],
  });
}

/** What differs between the modes: lychd's flag, systemctl's scope, the boot target, lychd.yaml. */
export function modeOf(target: Target) {
  const system = target.mode === "system";
  return {
    flags: system ? ["--system"] : [],
    scope: system ? [] : ["--user"],
    bootTarget: system ? "multi-user.target" : "default.target",
    config: system ? "/etc/lychd/lychd.yaml" : `${target.home}/.config/lychd/lychd.yaml`,
  };
}

/** Write the operator's lychd.yaml (its folder created), as the operator. */
export function writeConfig(target: Target, text: string): Promise<Run> {
  return target.run(
    ["sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0"', modeOf(target).config],
    text,
  );
}

/** The load generator, started in the target and left running until stop() is called. */
export function startLoad(
  target: Target,
  clients: number,
  models: string[] = [],
  extra: string[] = [],
) {
  const stopFile = `/tmp/lychd-load-stop-${crypto.randomUUID().slice(0, 8)}`;
  const running = target.run([
    DENO,
    "run",
    "--allow-net=127.0.0.1:8081",
    "--allow-read=/tmp",
    `${ROOT}/tests/e2e/load.ts`,
    String(clients),
    stopFile,
    ...models.flatMap((m) => ["--model", m]),
    ...extra,
  ]);
  return {
    async stop(): Promise<Outcome[]> {
      await target.run(["touch", stopFile]);
      const r = await running;
      await target.run(["rm", "-f", stopFile]);
      assertEquals(r.code, 0, r.stderr);
      return r.stdout.trim().split("\n").filter((l) => l).map((l) => JSON.parse(l) as Outcome);
    },
  };
}
