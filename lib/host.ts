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

import { LychdError } from "./errors.ts";

/** The file a running gate keeps in its control folder (lib/gate/control.ts). */
export const CONTROL_READY = "gate.json";

export type HttpResult = { status: number; body: string } | {
  error: "refused" | "timeout" | string;
};

export interface Host {
  env(name: string): string | undefined;
  /** The file's bytes, or null if it does not exist. */
  readFile(path: string): Promise<Uint8Array | null>;
  /** Temp file in the same folder, fsync, chmod, rename: readers see the old or the new file. */
  writeFileAtomic(path: string, data: Uint8Array, mode: number): Promise<void>;
  /** Remove a file; no error if it is already gone. */
  remove(path: string): Promise<void>;
  /** The names in a folder; [] if it does not exist. */
  listDir(path: string): Promise<string[]>;
  /** Remove a folder and everything in it; no error if it is already gone. */
  removeTree(path: string): Promise<void>;
  /** Remove a folder if it is empty; a folder with anything in it stays, silently. */
  removeEmptyDir(path: string): Promise<void>;
  /** Create a folder and its parents; existing folders keep their mode. */
  mkdirp(path: string, mode: number): Promise<void>;
  run(program: string, args: string[], stdin?: Uint8Array): Promise<RunResult>;
  /** Run, handing each line of its stdout and stderr to `onLine` as it comes; returns the exit code. */
  runLines(program: string, args: string[], onLine: (line: string) => void): Promise<number>;
  /** Run with the terminal attached (e.g. `journalctl -f`); returns the exit code. */
  runAttached(program: string, args: string[]): Promise<number>;
  exists(path: string): Promise<boolean>;
  /** When the file was last modified (ms since the epoch), or null if it does not exist. */
  modifiedAt(path: string): Promise<number | null>;
  /** Set a file's modification (and access) time, ms since the epoch. */
  setModifiedAt(path: string, ms: number): Promise<void>;
  /** The permission bits of a file or device, or null if it does not exist. */
  fileMode(path: string): Promise<number | null>;
  /** Where a symbolic link points, or null if `path` is not a link. */
  readLink(path: string): Promise<string | null>;
  /** Bytes under a path (a file, or a folder walked without following links); null if absent. */
  diskUsage(path: string): Promise<number | null>;
  /** The host's available memory in bytes (MemAvailable in /proc/meminfo); null if unknown. */
  memAvailable(): Promise<number | null>;
  /** `path` made absolute against the working folder. */
  absolute(path: string): string;
  /** Whether something accepts TCP connections on 127.0.0.1:`port`. */
  portOpen(port: number): Promise<boolean>;
  /** GET on a loopback URL, never throwing: connection refused and timeouts are results. */
  httpGet(url: string, timeoutMs: number): Promise<HttpResult>;
  /** POST of a JSON body to a loopback URL, never throwing, like httpGet. */
  httpPostJson(url: string, body: unknown, timeoutMs: number): Promise<HttpResult>;
  /**
   * One request to the gate through its control folder, never throwing: no gate there is
   * `refused`, no answer in time `timeout`. `body` is sent as JSON.
   */
  control(
    folder: string,
    method: "GET" | "POST",
    path: string,
    body: unknown,
    timeoutMs: number,
  ): Promise<HttpResult>;
  /** The program and arguments that run this lychd: the compiled binary, or deno on main.ts. */
  lychdProgram(): string[];
  /**
   * Take an exclusive lock on `path` (created if missing), waiting up to `timeoutMs`;
   * `onWait` is called once if the lock is not free at once. Released by the returned
   * function or, whatever happens, when the process ends (flock).
   */
  lock(path: string, timeoutMs: number, onWait: () => void): Promise<() => void>;
  /** Whether another lychd holds the lock on `path` now (no file: nobody does). */
  locked(path: string): Promise<boolean>;
  /** Milliseconds on the wall clock, with sub-millisecond precision. */
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Whether that stream is a terminal (progress drawn in place) rather than a file or pipe. */
  isTerminal(stream: "stdout" | "stderr"): boolean;
  /**
   * On SIGINT or SIGTERM, call `fn` (to explain the state of things) and exit with the code it
   * returns, instead of dying silently; returns the function that stops listening.
   */
  onInterrupt(fn: (signal: "SIGINT" | "SIGTERM") => number | Promise<number>): () => void;
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

  async listDir(path) {
    try {
      return (await Array.fromAsync(Deno.readDir(path))).map((e) => e.name);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
  },

  async removeTree(path) {
    try {
      await Deno.remove(path, { recursive: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  },

  async removeEmptyDir(path) {
    try {
      await Deno.remove(path);
    } catch { /* not empty, or gone */ }
  },

  async mkdirp(path, mode) {
    // The folders this creates get exactly `mode`, whatever the umask: the containers that read
    // lychd's data (Prometheus as nobody, Grafana as uid 472) need to enter them.
    const missing: string[] = [];
    for (let p = path; p && p !== "/"; p = p.slice(0, p.lastIndexOf("/")) || "/") {
      try {
        await Deno.stat(p);
        break;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        missing.unshift(p);
      }
    }
    for (const p of missing) {
      try {
        await Deno.mkdir(p, { mode });
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
        continue;
      }
      await Deno.chmod(p, mode);
    }
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

  async runLines(program, args, onLine) {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(program, { args, stdin: "null", stdout: "piped", stderr: "piped" })
        .spawn();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return 127;
      throw e;
    }
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      let rest = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        const parts = (rest + chunk).split(/\r?\n|\r/);
        rest = parts.pop()!;
        for (const line of parts) if (line.trim()) onLine(line);
      }
      if (rest.trim()) onLine(rest);
    };
    await Promise.all([pump(child.stdout), pump(child.stderr)]);
    return (await child.status).code;
  },

  async runAttached(program, args) {
    try {
      const r = await new Deno.Command(program, {
        args,
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      })
        .output();
      return r.code;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return 127;
      throw e;
    }
  },

  async fileMode(path) {
    try {
      return ((await Deno.stat(path)).mode ?? 0) & 0o7777;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  },

  async readLink(path) {
    try {
      return await Deno.readLink(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.InvalidData) return null;
      // Not a link: EINVAL.
      if ((e as Error).message.includes("Invalid argument")) return null;
      throw e;
    }
  },

  memAvailable() {
    try {
      // MemAvailable from /proc/meminfo (Deno reads the file itself: reading it directly would
      // need every permission).
      return Promise.resolve(Deno.systemMemoryInfo().available);
    } catch {
      return Promise.resolve(null);
    }
  },

  async diskUsage(path) {
    const walk = async (p: string): Promise<number> => {
      const st = await Deno.lstat(p);
      if (!st.isDirectory) return st.size;
      let total = 0;
      for await (const e of Deno.readDir(p)) total += await walk(`${p}/${e.name}`);
      return total;
    };
    try {
      return await walk(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  },

  async modifiedAt(path) {
    try {
      return (await Deno.stat(path)).mtime?.getTime() ?? null;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  },

  async setModifiedAt(path, ms) {
    await Deno.utime(path, new Date(ms), new Date(ms));
  },

  async exists(path) {
    try {
      await Deno.stat(path);
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  },

  absolute(path) {
    if (path.startsWith("/")) return path;
    try {
      return `${Deno.cwd().replace(/\/$/, "")}/${path.replace(/^\.\//, "")}`;
    } catch {
      throw new LychdError(
        `${path}: give an absolute path (this folder is outside what lychd may read)`,
        2,
      );
    }
  },

  async portOpen(port) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) throw e;
      return false;
    }
  },

  httpGet: (url, timeoutMs) => request(url, {}, timeoutMs),

  httpPostJson: (url, body, timeoutMs) =>
    request(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }, timeoutMs),

  async control(folder, method, path, body, timeoutMs) {
    // The gate's control folder (lib/gate/control.ts): a request file in, an answer file out.
    try {
      await Deno.stat(`${folder}/${CONTROL_READY}`);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) throw e;
      return { error: "refused" };
    }
    const id = crypto.randomUUID();
    const data = new TextEncoder().encode(JSON.stringify({ method, path, body: body ?? null }));
    await denoHost.writeFileAtomic(`${folder}/in/${id}.json`, data, 0o600);
    const answer = `${folder}/out/${id}.json`;
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      try {
        const text = await Deno.readTextFile(answer);
        await Deno.remove(answer).catch(() => {});
        return JSON.parse(text) as HttpResult;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    await Deno.remove(`${folder}/in/${id}.json`).catch(() => {});
    return { error: "timeout" };
  },

  lychdProgram() {
    if (Deno.build.standalone) return [Deno.execPath()];
    // `deno run` (a checkout): the same permission set as `deno task lychd`, from deno.json.
    const here = (p: string) => decodeURIComponent(new URL(p, import.meta.url).pathname);
    return [
      Deno.execPath(),
      "run",
      "-q",
      "-P",
      "--frozen",
      "--config",
      here("../deno.json"),
      here("../main.ts"),
    ];
  },

  async lock(path, timeoutMs, onWait) {
    const file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o600 });
    let done = false;
    const acquired = file.lock(true).then(() => (done = true));
    const waitTimer = setTimeout(() => done || onWait(), 150);
    let timeout: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"expired">((
      r,
    ) => (timeout = setTimeout(() => r("expired"), timeoutMs)));
    const winner = await Promise.race([acquired, expired]);
    clearTimeout(waitTimer);
    clearTimeout(timeout);
    if (winner === "expired") {
      // The pending lock() cannot be cancelled; the caller exits, which drops it.
      throw new Deno.errors.TimedOut(`waited ${Math.round(timeoutMs / 1000)} s for ${path}`);
    }
    return () => {
      try {
        file.unlockSync();
        file.close();
      } catch { /* already released */ }
    };
  },

  async locked(path) {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch {
      return false;
    }
    try {
      // A shared lock is refused only while someone holds the exclusive one (lychd's lock).
      return !(await file.tryLock(false));
    } finally {
      file.close(); // drops the shared lock too
    }
  },

  now: () => performance.timeOrigin + performance.now(),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
  isTerminal: (stream) => (stream === "stdout" ? Deno.stdout : Deno.stderr).isTerminal(),
  onInterrupt(fn) {
    const int = async () => Deno.exit(await fn("SIGINT"));
    const term = async () => Deno.exit(await fn("SIGTERM"));
    Deno.addSignalListener("SIGINT", int);
    Deno.addSignalListener("SIGTERM", term);
    return () => {
      Deno.removeSignalListener("SIGINT", int);
      Deno.removeSignalListener("SIGTERM", term);
    };
  },
  randomBytes: (n) => crypto.getRandomValues(new Uint8Array(n)),
  out: (text) => writeAll(Deno.stdout, text),
  err: (text) => writeAll(Deno.stderr, text),
};

/**
 * Write all of `text`, however many partial writes it takes. A reader that went away
 * (`lychd init --dry-run | head -3`) ends lychd quietly, as `git log | head` does: exit 0 for
 * stdout (what was asked for was delivered as far as anyone reads), nothing printed.
 */
function writeAll(stream: typeof Deno.stdout | typeof Deno.stderr, text: string): void {
  const data = new TextEncoder().encode(text);
  try {
    let written = 0;
    while (written < data.length) written += stream.writeSync(data.subarray(written));
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(stream === Deno.stdout ? 0 : 1);
    throw e;
  }
}

/** One HTTP request, never throwing: refused, timeouts and closed connections are results. */
async function request(url: string, init: RequestInit, timeoutMs: number): Promise<HttpResult> {
  try {
    const r = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    return { status: r.status, body: await r.text() };
  } catch (e) {
    if ((e as Error)?.name === "TimeoutError") return { error: "timeout" };
    // Deno says only "fetch failed"; what happened is in the cause.
    const cause = (e as Error)?.cause;
    const text = `${(e as Error)?.message ?? e} ${cause instanceof Error ? cause.message : ""}`;
    if (e instanceof Deno.errors.NotCapable) throw e;
    if (/refused|ECONNREFUSED/i.test(text)) return { error: "refused" };
    if (/connection closed|reset|broken pipe|incomplete/i.test(text)) {
      return { error: "connection closed without an answer" };
    }
    return { error: text.trim() };
  }
}
