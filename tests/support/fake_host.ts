/** An in-memory Host for unit tests of commands: files in a Map, programs answered by a script. */
import type { Host, HttpResult, RunResult } from "../../lib/host.ts";

export interface FakeHostOptions {
  env?: Record<string, string>;
  files?: Record<string, string>;
  /** Answers for programs, by "program arg1 arg2"; default exit 0. */
  programs?: (program: string, args: string[]) => RunResult;
  /** Throw on the Nth call to writeFileAtomic (1-based), to simulate a crash there. */
  failOnWrite?: number;
  /** Answers for HTTP GETs (the engine on port 8081); default: connection refused. */
  /** Answers for HTTP requests; `body` is the JSON text of a POST. */
  http?: (url: string, body?: string) => HttpResult;
  /** Answers requests to the gate's control folder; unset = no gate runs. */
  control?: (method: string, path: string, body: unknown) => HttpResult | undefined;
}

export class FakeHost implements Host {
  files = new Map<string, { data: Uint8Array; mode: number }>();
  calls: string[] = [];
  stdout = "";
  stderr = "";
  writes = 0;

  constructor(private options: FakeHostOptions = {}) {
    for (const [path, text] of Object.entries(options.files ?? {})) {
      this.files.set(path, { data: new TextEncoder().encode(text), mode: 0o644 });
    }
  }

  env(name: string) {
    return (this.options.env ?? { HOME: "/home/ada" })[name];
  }

  readFile(path: string) {
    return Promise.resolve(this.files.get(path)?.data ?? null);
  }

  writeFileAtomic(path: string, data: Uint8Array, mode: number) {
    this.writes++;
    if (this.options.failOnWrite === this.writes) {
      return Promise.reject(new Error(`simulated crash at write ${this.writes}`));
    }
    this.files.set(path, { data: data.slice(), mode });
    this.mtimes.set(path, this.clock);
    return Promise.resolve();
  }

  remove(path: string) {
    this.files.delete(path);
    return Promise.resolve();
  }

  /** Files and links directly in `path`, and its folders (those that hold any file). */
  listDir(path: string) {
    const prefix = `${path}/`;
    const names = new Set(
      [...this.files.keys(), ...this.links.keys()].filter((p) => p.startsWith(prefix))
        .map((p) => p.slice(prefix.length).split("/")[0]),
    );
    return Promise.resolve([...names]);
  }

  removeTree(path: string) {
    for (const p of [...this.files.keys()]) {
      if (p === path || p.startsWith(`${path}/`)) this.files.delete(p);
    }
    this.dirs.forEach((d) => (d === path || d.startsWith(`${path}/`)) && this.dirs.delete(d));
    return Promise.resolve();
  }

  removeEmptyDir() {
    return Promise.resolve();
  }

  /** Folders created with mkdirp. */
  dirs = new Set<string>();

  mkdirp(path: string) {
    this.dirs.add(path);
    return Promise.resolve();
  }

  run(program: string, args: string[]) {
    this.calls.push([program, ...args].join(" "));
    return Promise.resolve(
      this.options.programs?.(program, args) ?? { code: 0, stdout: "", stderr: "" },
    );
  }

  async runLines(program: string, args: string[], onLine: (line: string) => void) {
    const r = await this.run(program, args);
    for (const line of (r.stdout + r.stderr).split("\n")) if (line.trim()) onLine(line);
    return r.code;
  }

  /** Symbolic links: path -> target. */
  links = new Map<string, string>();

  readLink(path: string) {
    return Promise.resolve(this.links.get(path) ?? null);
  }

  fileMode(path: string) {
    return Promise.resolve(this.files.get(path)?.mode ?? null);
  }

  /** MemAvailable in bytes; null: unknown. */
  available: number | null = 64 * 2 ** 30;
  memAvailable() {
    return Promise.resolve(this.available);
  }

  diskUsage(path: string) {
    const prefix = `${path}/`;
    const sizes = [...this.files.entries()].filter(([p]) => p === path || p.startsWith(prefix))
      .map(([, f]) => f.data.length);
    return Promise.resolve(sizes.length ? sizes.reduce((a, b) => a + b, 0) : null);
  }

  runAttached(program: string, args: string[]) {
    return this.run(program, args).then((r) => r.code);
  }

  mtimes = new Map<string, number>();

  modifiedAt(path: string) {
    return Promise.resolve(this.files.has(path) ? this.mtimes.get(path) ?? 0 : null);
  }

  setModifiedAt(path: string, ms: number) {
    this.calls.push(`touch -d @${ms / 1000} ${path}`);
    this.mtimes.set(path, ms);
    return Promise.resolve();
  }

  /** A file, a folder made with mkdirp, or a folder that holds a file. */
  exists(path: string) {
    return Promise.resolve(
      this.files.has(path) || this.dirs.has(path) ||
        [...this.files.keys()].some((p) => p.startsWith(`${path}/`)),
    );
  }

  absolute(path: string) {
    return path.startsWith("/") ? path : `/home/ada/work/${path}`;
  }

  openPorts = new Set<number>();

  portOpen(port: number) {
    return Promise.resolve(this.openPorts.has(port));
  }

  httpGet(url: string, _timeoutMs: number): Promise<HttpResult> {
    this.clock += 1;
    return Promise.resolve(this.options.http?.(url) ?? { error: "refused" });
  }

  posts: { url: string; body: unknown }[] = [];

  httpPostJson(url: string, body: unknown, _timeoutMs: number): Promise<HttpResult> {
    this.clock += 1;
    this.posts.push({ url, body });
    return Promise.resolve(this.options.http?.(url, JSON.stringify(body)) ?? { error: "refused" });
  }

  /** Calls to the gate's control folder; `options.control` answers them (default: no gate). */
  controls: { folder: string; method: string; path: string; body: unknown }[] = [];

  control(
    folder: string,
    method: "GET" | "POST",
    path: string,
    body: unknown,
    _timeoutMs: number,
  ): Promise<HttpResult> {
    this.clock += 1;
    this.controls.push({ folder, method, path, body });
    return Promise.resolve(this.options.control?.(method, path, body) ?? { error: "refused" });
  }

  lychdProgram() {
    return ["/usr/local/bin/lychd"];
  }

  lock(_path: string, _timeoutMs: number, _onWait: () => void) {
    return Promise.resolve(() => {});
  }

  /** No other lychd runs on the fake host. */
  locked(_path: string) {
    return Promise.resolve(false);
  }

  clock = 1_700_000_000_000;

  now() {
    return this.clock;
  }

  sleep(ms: number) {
    this.clock += ms;
    return Promise.resolve();
  }

  /** Which streams are terminals; by default neither. */
  terminals = new Set<"stdout" | "stderr">();

  isTerminal(stream: "stdout" | "stderr") {
    return this.terminals.has(stream);
  }

  interrupt: ((signal: "SIGINT" | "SIGTERM") => number | Promise<number>) | null = null;

  onInterrupt(fn: (signal: "SIGINT" | "SIGTERM") => number | Promise<number>) {
    this.interrupt = fn;
    return () => {
      this.interrupt = null;
    };
  }

  randomBytes(n: number) {
    return new Uint8Array(n).fill(7);
  }

  out(text: string) {
    this.stdout += text;
  }

  err(text: string) {
    this.stderr += text;
  }

  text(path: string): string | null {
    const f = this.files.get(path);
    return f ? new TextDecoder().decode(f.data) : null;
  }

  /** path -> content of every file, to compare whole trees before and after. */
  snapshot(): Record<string, string> {
    return Object.fromEntries(
      [...this.files.keys()].sort().map((p) => [p, this.text(p)!]),
    );
  }
}
