/**
 * Runs the real CLI the way the binary runs: same entry point, under deno.json's default
 * permission set (`-P`), in a throwaway HOME, with fake `systemctl` / `podman` first on PATH.
 */
const ROOT = new URL("../..", import.meta.url).pathname;
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

export interface Sandbox {
  home: string;
  bin: string;
  /** Every call to a fake program, one line each: "systemctl --user daemon-reload". */
  calls(): Promise<string[]>;
  run(args: string[], env?: Record<string, string>): Promise<CliResult>;
  /** A fake program that logs its arguments and exits with `code` (or prints `stdout`). */
  fake(name: string, code?: number, stdout?: string): Promise<void>;
  read(path: string): Promise<string>;
  /** Every file under HOME with its content, to prove a run changed nothing. */
  tree(): Promise<Record<string, string>>;
  cleanup(): Promise<void>;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function sandbox(): Promise<Sandbox> {
  const home = await Deno.makeTempDir({ prefix: "lychd-home-" });
  const bin = `${home}/.fakebin`;
  await Deno.mkdir(bin);
  const log = `${home}/.fakebin/calls.log`;
  const sb: Sandbox = {
    home,
    bin,
    async calls() {
      try {
        return (await Deno.readTextFile(log)).split("\n").filter((l) => l);
      } catch {
        return [];
      }
    },
    async fake(name, code = 0, stdout = "") {
      await Deno.writeTextFile(
        `${bin}/${name}`,
        `#!/bin/sh\necho "${name} $*" >> '${log}'\nprintf '%s' '${stdout}'\nexit ${code}\n`,
        { mode: 0o755 },
      );
    },
    run(args, env = {}) {
      return runCli(args, {
        HOME: home,
        PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`,
        ...env,
      });
    },
    read: (path) => Deno.readTextFile(path.startsWith("/") ? path : `${home}/${path}`),
    async tree() {
      const out: Record<string, string> = {};
      const walk = async (dir: string) => {
        for await (const e of Deno.readDir(dir)) {
          const p = `${dir}/${e.name}`;
          if (p === bin) continue;
          if (e.isDirectory) await walk(p);
          else out[p.slice(home.length + 1)] = await Deno.readTextFile(p);
        }
      };
      await walk(home);
      return out;
    },
    cleanup: () => Deno.remove(home, { recursive: true }),
  };
  await sb.fake("systemctl");
  // A podman whose secret store is a folder: inspect fails until create ran.
  await Deno.writeTextFile(
    `${bin}/podman`,
    `#!/bin/sh
echo "podman $*" >> '${log}'
case "$1 $2" in
  "secret inspect") test -e '${bin}/secret-'"$3" ;;
  "secret create") cp "$4" '${bin}/secret-'"$3" ;;
esac
`,
    { mode: 0o755 },
  );
  return sb;
}

/** `deno` arguments that run lychd as the binary does: its entry point, its permission set. */
export function lychdArgs(args: string[]): string[] {
  return ["run", "-q", "-P", "--frozen", `${ROOT}main.ts`, ...args];
}

/** The same run, pausing `pauseMs` after each file written (tests/support/paused_writes_main.ts). */
export function pausedLychdArgs(pauseMs: number, args: string[]): string[] {
  return [
    "run",
    "-q",
    "-P",
    "--frozen",
    `${ROOT}tests/support/paused_writes_main.ts`,
    String(pauseMs),
    ...args,
  ];
}

/** The environment of a lychd run in a test home: fakes first on PATH, the shared Deno cache. */
export function testEnv(sb: Sandbox, extra: Record<string, string> = {}): Record<string, string> {
  return { HOME: sb.home, PATH: `${sb.bin}:/usr/bin:/bin`, DENO_DIR, NO_COLOR: "1", ...extra };
}

export async function runCli(args: string[], env: Record<string, string>): Promise<CliResult> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: lychdArgs(args),
    cwd: ROOT,
    clearEnv: true,
    env: { DENO_DIR, NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}
