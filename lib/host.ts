/**
 * The one interface between lychd and the world: files, programs, environment, randomness and
 * output. Commands receive a Host; the core never touches Deno.* directly, so unit tests pass a
 * fake (tests/support/fake_host.ts) and run without permissions.
 */

export interface RunResult {
  /** Exit code; 127 when the program is not installed. */
  code: number;
  stdout: string;
  stderr: string;
}

export interface Host {
  env(name: string): string | undefined;
  /** The file's bytes, or null if it does not exist. */
  readFile(path: string): Promise<Uint8Array | null>;
  /** Temp file in the same folder, fsync, chmod, rename: readers see the old or the new file. */
  writeFileAtomic(path: string, data: Uint8Array, mode: number): Promise<void>;
  /** Remove a file; no error if it is already gone. */
  remove(path: string): Promise<void>;
  /** Create a folder and its parents; existing folders keep their mode. */
  mkdirp(path: string, mode: number): Promise<void>;
  run(program: string, args: string[], stdin?: Uint8Array): Promise<RunResult>;
  randomBytes(n: number): Uint8Array;
  out(text: string): void;
  err(text: string): void;
}

export const denoHost: Host = {
  env: (name) => Deno.env.get(name),

  async readFile(path) {
    try {
      return await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  },

  async writeFileAtomic(path, data, mode) {
    const slash = path.lastIndexOf("/");
    const tmp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}.lychd-tmp-${
      crypto.randomUUID().slice(0, 8)
    }`;
    const file = await Deno.open(tmp, { write: true, createNew: true, mode });
    try {
      let written = 0;
      while (written < data.length) written += await file.write(data.subarray(written));
      await file.sync();
      file.close();
      // The open mode is filtered by the umask; the file must end with exactly `mode`.
      await Deno.chmod(tmp, mode);
      await Deno.rename(tmp, path);
    } catch (e) {
      try {
        file.close();
      } catch { /* already closed */ }
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
  },

  async remove(path) {
    try {
      await Deno.remove(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  },

  async mkdirp(path, mode) {
    await Deno.mkdir(path, { recursive: true, mode });
  },

  async run(program, args, stdin) {
    try {
      const child = new Deno.Command(program, {
        args,
        stdin: stdin ? "piped" : "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      if (stdin) {
        const w = child.stdin.getWriter();
        await w.write(stdin);
        await w.close();
      }
      const r = await child.output();
      const dec = new TextDecoder();
      return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        return { code: 127, stdout: "", stderr: `${program}: not found` };
      }
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
        return {
          code: 126,
          stdout: "",
          stderr: `${program}: not permitted (${(e as Error).message})`,
        };
      }
      throw e;
    }
  },

  randomBytes: (n) => crypto.getRandomValues(new Uint8Array(n)),
  out: (text) => void Deno.stdout.writeSync(new TextEncoder().encode(text)),
  err: (text) => void Deno.stderr.writeSync(new TextEncoder().encode(text)),
};
