/**
 * systemd, Podman and the engines in miniature, for fast unit tests of swap/status/stop/doctor
 * on a FakeHost: `systemctl start` of a soulstone stops exactly the units its unit file names in
 * Conflicts= (a unit without them stops nothing, and the swap tests fail); the start waits for
 * those stops only if the units are ordered (After= either way), as in systemd's transactions:
 * unordered, the new engine starts while the old one still holds port 8081 and dies on the
 * bind. Engines become ready on the fake clock as scripted, and /health and /v1/models answer from the engine that is
 * active, with the model it was started with. A container keeps the stop timeout its unit had
 * when it started, as Podman does. The real thing is tested in e2e_sandbox_test.ts.
 */
import type { HttpResult, RunResult } from "../../lib/host.ts";
import { init } from "../../lib/commands/init.ts";
import type { Override } from "../../lib/config/yaml.ts";
import { FakeHost } from "./fake_host.ts";

export interface EngineScript {
  model: string;
  /** ms after start until the port opens (connection refused before). */
  refusedMs?: number;
  /** ms after start until /health is 200 (503 "Loading model" before); null = never. */
  readyMs?: number | null;
  /** `systemctl start` fails (bad image, ...). */
  failStart?: boolean;
  /** The process dies this long after start: the unit ends `failed`. */
  dieMs?: number;
  /** Ignores SIGTERM: stopping it takes the stop timeout, then it is killed (exit 137). */
  stuckStopMs?: number;
  /** With dieMs: systemd restarts it (Restart=on-failure): activating (auto-restart), NRestarts. */
  restarts?: boolean;
  /** ms a clean stop takes (SIGTERM to exit); default 300. */
  stopMs?: number;
  /** ms `systemctl start` takes to return (the container created and started); default 200. */
  startMs?: number;
  /** The cartridge's gpu: (default: lychd's default, nvidia). */
  gpu?: string;
  /** ms the first completion takes (default 100); the clock moves by it. */
  warmupMs?: number;
  /** The first completion fails (HTTP 500). */
  warmupFails?: boolean;
}

interface Unit {
  state: "active" | "activating" | "inactive" | "failed";
  since: number;
  inactiveEnter: number | null;
  activeEnter: number | null;
  result: string;
  execMainStatus: string;
  /** What the running instance was started with. */
  model: string | null;
  stopTimeoutSec: number | null;
  nRestarts: number;
  autoRestart: boolean;
}

export class FakeSystemd {
  units = new Map<string, Unit>();
  missingImages = new Set<string>();
  /** Engines that started while an unordered conflicting one still held the port. */
  bindFailures: string[] = [];
  host: FakeHost;

  constructor(
    readonly engines: Record<string, EngineScript>,
    files: Record<string, string> = {},
    active: string | null = null,
    public extraPrograms: (program: string, args: string[]) => RunResult | null = () => null,
  ) {
    this.host = new FakeHost({
      files,
      programs: (program, args) => this.program(program, args),
      http: (url, body) => this.http(url, body),
    });
    for (const name of Object.keys(engines)) this.unit(`soulstone-${name}.service`);
    if (active) this.activate(`soulstone-${active}.service`);
  }

  unit(name: string): Unit {
    if (!this.units.has(name)) {
      this.units.set(name, {
        state: "inactive",
        since: 0,
        inactiveEnter: null,
        activeEnter: null,
        result: "success",
        execMainStatus: "0",
        model: null,
        stopTimeoutSec: null,
        nRestarts: 0,
        autoRestart: false,
      });
    }
    return this.units.get(name)!;
  }

  /** The unit file lychd wrote for a service, if any. */
  unitFile(name: string): string | null {
    const file = name.replace(/\.service$/, ".container");
    const path = [...this.host.files.keys()].find((p) => p.endsWith(`/containers/systemd/${file}`));
    return path ? this.host.text(path) : null;
  }

  /** The names in a unit file's `key=` lines (Conflicts=, After=, Before=), as systemd reads them. */
  unitList(name: string, key: string): string[] {
    const text = this.unitFile(name) ?? "";
    return [...text.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))]
      .flatMap((m) => m[1].trim().split(/\s+/)).filter((n) => n);
  }

  conflicts(name: string): string[] {
    return this.unitList(name, "Conflicts");
  }

  /**
   * systemd skips a start whose ExecCondition= fails: the soulstones' is `test -z "${MARK}"`
   * against the manager's environment (docs/warm-swaps.md, "A crash while asleep").
   */
  conditionFails(name: string): boolean {
    const line = (this.unitFile(name) ?? "").match(/^ExecCondition=.*\$\{(\w+)\}/m);
    return line !== null && (this.environment.get(line[1]) ?? "") !== "";
  }

  /** Whether systemd orders the two units (either way), so a stop of one precedes a start of the other. */
  ordered(a: string, b: string): boolean {
    return this.unitList(a, "After").includes(b) || this.unitList(a, "Before").includes(b) ||
      this.unitList(b, "After").includes(a) || this.unitList(b, "Before").includes(a);
  }

  activate(name: string) {
    const u = this.unit(name);
    const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
    const stop = (this.unitFile(name) ?? "").match(/--stop-timeout=(\d+)/);
    Object.assign(u, {
      state: "active",
      since: this.host.clock,
      activeEnter: this.host.clock,
      result: "success",
      model: script?.model ?? null,
      stopTimeoutSec: stop ? Number(stop[1]) : null,
      autoRestart: false,
    });
  }

  /** The unit's state now, after any scripted death. */
  state(name: string): Unit {
    const u = this.unit(name);
    const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
    if (
      u.state === "active" && script?.dieMs !== undefined &&
      this.host.clock - u.since >= script.dieMs
    ) {
      Object.assign(u, {
        state: script.restarts ? "activating" : "failed",
        inactiveEnter: u.since + script.dieMs,
        result: "exit-code",
        execMainStatus: "1",
        autoRestart: script.restarts === true,
        nRestarts: u.nRestarts + (script.restarts ? 1 : 0),
      });
    }
    return u;
  }

  /** podman stop --time N: SIGTERM, then SIGKILL after N s; the unit's main process exits. */
  podmanStop(name: string, seconds: number) {
    const u = this.state(name);
    if (u.state !== "active") return;
    const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
    if (script?.stuckStopMs) {
      this.host.clock += seconds * 1000;
      Object.assign(u, { state: "failed", result: "exit-code", execMainStatus: "137" });
    } else {
      this.host.clock += script?.stopMs ?? 300;
      Object.assign(u, { state: "inactive", result: "success", execMainStatus: "0" });
    }
    u.inactiveEnter = this.host.clock;
  }

  stop(name: string) {
    const u = this.state(name);
    if (u.state === "activating") {
      // A pending automatic restart is cancelled.
      Object.assign(u, { state: "inactive", autoRestart: false, inactiveEnter: this.host.clock });
      return;
    }
    if (u.state !== "active") return;
    const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
    if (script?.stuckStopMs) {
      // Podman's stop timeout (fixed when the container started), else systemd's TimeoutStopSec
      // (read from the unit now) kills it, whichever comes first.
      const systemdSec = Number(
        (this.unitFile(name) ?? "").match(/^TimeoutStopSec=(\d+)/m)?.[1] ?? 90,
      );
      const ms = Math.min(script.stuckStopMs, (u.stopTimeoutSec ?? 10) * 1000, systemdSec * 1000);
      const bySystemd =
        systemdSec * 1000 < Math.min(script.stuckStopMs, (u.stopTimeoutSec ?? 10) * 1000);
      this.host.clock += ms;
      Object.assign(u, {
        state: "failed",
        result: bySystemd ? "timeout" : "exit-code",
        execMainStatus: "137",
      });
    } else {
      this.host.clock += script?.stopMs ?? 300;
      Object.assign(u, { state: "inactive", result: "success", execMainStatus: "0" });
    }
    u.inactiveEnter = this.host.clock;
  }

  program(program: string, args: string[]): RunResult {
    const extra = this.extraPrograms(program, args);
    if (extra) return extra;
    const ok = (stdout = ""): RunResult => ({ code: 0, stdout, stderr: "" });
    if (program === "journalctl") {
      const lines = ["engine: loading weights", "engine: out of patience"];
      const n = Number(args[args.indexOf("-n") + 1] ?? lines.length);
      return ok(lines.slice(-n).join("\n") + "\n");
    }
    if (program === "podman") {
      // Every image is here, unless the test says otherwise.
      if (args[0] === "image" && args[1] === "exists") {
        return { code: this.missingImages.has(args[2]) ? 1 : 0, stdout: "", stderr: "" };
      }
      if (args[0] === "container" && args[1] === "inspect") {
        const u = this.unit(`${args.at(-1)}.service`);
        return u.state === "active" && u.stopTimeoutSec !== null
          ? ok(`${u.stopTimeoutSec}\n`)
          : { code: 125, stdout: "", stderr: "Error: no such container" };
      }
      if (args[0] === "stop") {
        this.podmanStop(`${args.at(-1)}.service`, Number(args[args.indexOf("--time") + 1]));
        return ok();
      }
      if (args[0] === "image" && args[1] === "inspect") {
        return this.missingImages.has(args.at(-1)!)
          ? { code: 125, stdout: "", stderr: "Error: no such image" }
          : ok("4200000000\n");
      }
      return ok();
    }
    if (program !== "systemctl") return { code: 127, stdout: "", stderr: `${program}: not found` };
    const a = args.filter((x) => x !== "--user");
    switch (a[0]) {
      case "daemon-reload":
        return ok();
      case "enable":
        for (const n of a.slice(1)) this.enabled.add(n);
        return ok();
      case "set-environment":
        for (const kv of a.slice(1)) {
          const i = kv.indexOf("=");
          this.environment.set(kv.slice(0, i), kv.slice(i + 1));
        }
        return ok();
      case "status": {
        // systemctl status's layout (systemd 252): a running unit's cgroup tree with its PIDs.
        const name = a.at(-1)!;
        const pids = this.unitPids.get(name);
        if (this.state(name).state !== "active" || !pids) {
          return { code: 3, stdout: `○ ${name}\n     Active: inactive (dead)\n`, stderr: "" };
        }
        return ok(
          `● ${name} - fake\n     Active: active (running)\n     CGroup: /app.slice/${name}\n` +
            `             ├─libpod-payload-0123\n` +
            pids.engine.map((p, i, all) =>
              `             │ ${i === all.length - 1 ? "└─" : "├─"}${p} python3 -m engine\n`
            ).join("") +
            `             └─runtime\n               └─${pids.conmon} /usr/bin/conmon --api-version 1\n`,
        );
      }
      case "show-environment":
        return ok([...this.environment].map(([k, v]) => `${k}=${v}\n`).join(""));
      case "unset-environment":
        for (const k of a.slice(1)) this.environment.delete(k);
        return ok();
      case "reset-failed":
        for (const n of a.slice(1)) {
          Object.assign(this.unit(n), { state: "inactive", result: "success" });
        }
        return ok();
      case "stop":
        for (const n of a.slice(1)) this.stop(n);
        return ok();
      case "restart":
        this.stop(a[1]);
        if (this.conditionFails(a[1])) return ok();
        this.host.clock += this.engines[a[1].replace(/^soulstone-|\.service$/g, "")]?.startMs ??
          200;
        this.activate(a[1]);
        return ok();
      case "start": {
        const name = a[1];
        const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
        // Conflicts= from the unit file: what systemd stops when starting this one. Without an
        // ordering the stop and the start run at once: the old engine still holds the port.
        const holding = this.conflicts(name).filter((o) =>
          this.state(o).state === "active" && !this.ordered(name, o)
        );
        for (const other of this.conflicts(name)) this.stop(other);
        if (holding.length > 0 && this.state(name).state !== "active") {
          Object.assign(this.unit(name), {
            state: "failed",
            result: "exit-code",
            execMainStatus: "1",
            inactiveEnter: this.host.clock,
          });
          this.bindFailures.push(`${name}: port 8081 still held by ${holding.join(" ")}`);
          return ok();
        }
        if (script?.failStart) {
          Object.assign(this.unit(name), {
            state: "failed",
            result: "exit-code",
            inactiveEnter: this.host.clock,
          });
          return {
            code: 1,
            stdout: "",
            stderr: `Job for ${name} failed because the control process exited with error code.`,
          };
        }
        if (this.state(name).state !== "active" && this.conditionFails(name)) {
          this.skippedStarts.push(name);
          return ok();
        }
        if (this.state(name).state !== "active") {
          this.host.clock += script?.startMs ?? 200;
          this.activate(name);
        }
        return ok();
      }
      case "show": {
        const props = a[a.indexOf("-p") + 1].split(",");
        const units = a.slice(a.indexOf("-p") + 2);
        return ok(units.map((n) => this.show(n, props)).join("\n\n") + "\n");
      }
      case "--version":
        return ok("systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT\n");
      case "is-system-running":
        return ok("running\n");
      default:
        return { code: 1, stdout: "", stderr: `fake systemctl: ${a.join(" ")}` };
    }
  }

  /** The processes `systemctl status` lists for a running unit: conmon and the engine's. */
  unitPids = new Map<string, { conmon: number; engine: number[] }>();

  /** Host RAM a running unit holds (MemoryCurrent); "[not set]" where absent. */
  memoryCurrent = new Map<string, number>();

  /** Starts skipped by a failed ExecCondition=. */
  skippedStarts: string[] = [];

  /** The manager's environment (`systemctl set-environment`). */
  environment = new Map<string, string>();

  /** Units `systemctl enable` was run for. */
  enabled = new Set<string>();

  show(name: string, props: string[]): string {
    const u = this.state(name);
    const values: Record<string, string> = {
      Id: name,
      ActiveState: u.state,
      SubState: u.autoRestart
        ? "auto-restart"
        : u.state === "active"
        ? "running"
        : u.state === "failed"
        ? "failed"
        : "dead",
      NRestarts: String(u.nRestarts),
      ActiveEnterTimestamp: stamp(u.activeEnter),
      InactiveEnterTimestamp: stamp(u.inactiveEnter),
      Result: u.result,
      ExecMainStatus: u.execMainStatus,
      // A plain unit's [Install] link (the gate's); Quadlet units are generated, never enabled.
      UnitFileState: this.enabled.has(name) ? "enabled" : "disabled",
      ControlGroup: `/app.slice/${name}`,
      MemoryCurrent: u.state === "active"
        ? String(this.memoryCurrent.get(name) ?? "[not set]")
        : "[not set]",
    };
    return props.map((p) => `${p}=${values[p] ?? ""}`).join("\n");
  }

  /** The completions the engines got (the warm-up), with the engine that answered. */
  completions: { engine: string; body: unknown }[] = [];

  /** Ports of the watchers that answer their health endpoint (Prometheus 9090, Grafana 3000). */
  watchersUp = new Set<number>();

  /** Where the engines answer: 8081, or the gate's engine port (gate: true). */
  enginePort = 8081;

  http(url: string, body?: string): HttpResult {
    const port = Number(new URL(url).port);
    if (port !== this.enginePort) {
      return this.watchersUp.has(port) ? { status: 200, body: "ok" } : { error: "refused" };
    }
    const active = [...this.units.keys()].find((n) =>
      n.startsWith("soulstone-") && this.state(n).state === "active"
    );
    if (!active) return { error: "refused" };
    const script = this.engines[active.replace(/^soulstone-|\.service$/g, "")];
    const age = this.host.clock - this.unit(active).since;
    if (age < (script.refusedMs ?? 0)) return { error: "refused" };
    const ready = script.readyMs !== null && age >= (script.readyMs ?? 0);
    if (url.endsWith("/v1/completions") && body !== undefined) {
      this.host.clock += script.warmupMs ?? 100;
      this.completions.push({ engine: active, body: JSON.parse(body) });
      return script.warmupFails
        ? { status: 500, body: '{"error":{"message":"CUDA error: an illegal memory access"}}' }
        : { status: 200, body: '{"choices":[{"text":" there","index":0}]}' };
    }
    if (url.endsWith("/v1/models")) {
      return {
        status: 200,
        body: JSON.stringify({ object: "list", data: [{ id: this.unit(active).model }] }),
      };
    }
    return ready ? { status: 200, body: '{"status":"ok"}' } : {
      status: 503,
      body: '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
    };
  }
}

function stamp(ms: number | null): string {
  if (ms === null) return "";
  const d = new Date(ms);
  const iso = d.toISOString(); // 2026-11-26T08:43:21.123Z
  const micros = String(Math.round((ms % 1000) * 1000)).padStart(6, "0");
  return `Thu ${iso.slice(0, 10)} ${iso.slice(11, 19)}.${micros} UTC`;
}

/** `engines` installed by a real `lychd init` on a FakeSystemd, `active` running; the logs emptied. */
export async function installedSystemd(
  engines: Record<string, EngineScript>,
  active: string | null,
  system = false,
): Promise<FakeSystemd> {
  const fs = new FakeSystemd(engines, {}, null);
  const code = await init(fs.host, {
    config: { system, configPath: null, overrides: engineOverrides(engines, active) },
    dryRun: false,
    force: false,
    reload: true,
  });
  if (code !== 0) throw new Error(`init failed (${code}): ${fs.host.stderr}`);
  if (active) fs.activate(`soulstone-${active}.service`);
  fs.host.calls = [];
  fs.host.stdout = "";
  fs.host.stderr = "";
  return fs;
}

/**
 * The init flags for `engines`: their list, their models and the boot engine; and the layout
 * without the gate (`gate: false`, engines on 8081), which is what this miniature plays: its
 * tests are about systemd's part of a swap. gate_units_test.ts passes `gate` true and scripts a
 * gate; the end-to-end suites run the default layout, the gate, under real systemd.
 */
export function engineOverrides(
  engines: Record<string, EngineScript>,
  active: string | null,
  gate = false,
): Override[] {
  return [
    { path: ["gate"], value: gate, flag: "test" },
    { path: ["engines"], value: Object.keys(engines), flag: "--engines" },
    ...Object.entries(engines).map(([e, s]) => ({
      path: ["cartridges", e, "model"],
      value: s.model,
      flag: "--model",
    })),
    ...Object.entries(engines).filter(([, s]) => s.gpu).map(([e, s]) => ({
      path: ["cartridges", e, "gpu"],
      value: s.gpu,
      flag: "test",
    })),
    ...(active ? [{ path: ["active"], value: active, flag: "--active" }] : []),
  ];
}
