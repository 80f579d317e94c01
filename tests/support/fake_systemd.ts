/**
 * systemd, Podman and the engines in miniature, for fast unit tests of swap/status/stop/doctor
 * on a FakeHost: `systemctl start` of a soulstone stops the others first (Conflicts= + After=),
 * engines become ready on the fake clock as scripted, and /health and /v1/models answer from
 * the engine that is active. The real thing is tested in e2e_sandbox_test.ts.
 */
import type { HttpResult, RunResult } from "../../lib/host.ts";
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
}

interface Unit {
  state: "active" | "inactive" | "failed";
  since: number;
  inactiveEnter: number | null;
  activeEnter: number | null;
  result: string;
  execMainStatus: string;
}

export class FakeSystemd {
  units = new Map<string, Unit>();
  missingImages = new Set<string>();
  host: FakeHost;

  constructor(
    readonly engines: Record<string, EngineScript>,
    files: Record<string, string> = {},
    active: string | null = null,
    readonly extraPrograms: (program: string, args: string[]) => RunResult | null = () => null,
  ) {
    this.host = new FakeHost({
      files,
      programs: (program, args) => this.program(program, args),
      http: (url) => this.http(url),
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
      });
    }
    return this.units.get(name)!;
  }

  activate(name: string) {
    const u = this.unit(name);
    Object.assign(u, {
      state: "active",
      since: this.host.clock,
      activeEnter: this.host.clock,
      result: "success",
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
        state: "failed",
        inactiveEnter: u.since + script.dieMs,
        result: "exit-code",
        execMainStatus: "1",
      });
    }
    return u;
  }

  stop(name: string) {
    const u = this.state(name);
    if (u.state !== "active") return;
    const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
    if (script?.stuckStopMs) {
      this.host.clock += script.stuckStopMs;
      Object.assign(u, { state: "failed", result: "exit-code", execMainStatus: "137" });
    } else {
      this.host.clock += 300;
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
      case "reset-failed":
        for (const n of a.slice(1)) {
          Object.assign(this.unit(n), { state: "inactive", result: "success" });
        }
        return ok();
      case "stop":
        for (const n of a.slice(1)) this.stop(n);
        return ok();
      case "start": {
        const name = a[1];
        for (const other of this.units.keys()) {
          if (other !== name && other.startsWith("soulstone-")) this.stop(other);
        }
        const script = this.engines[name.replace(/^soulstone-|\.service$/g, "")];
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
        if (this.state(name).state !== "active") {
          this.host.clock += 200;
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
      default:
        return { code: 1, stdout: "", stderr: `fake systemctl: ${a.join(" ")}` };
    }
  }

  show(name: string, props: string[]): string {
    const u = this.state(name);
    const values: Record<string, string> = {
      Id: name,
      ActiveState: u.state,
      SubState: u.state === "active" ? "running" : u.state === "failed" ? "failed" : "dead",
      ActiveEnterTimestamp: stamp(u.activeEnter),
      InactiveEnterTimestamp: stamp(u.inactiveEnter),
      Result: u.result,
      ExecMainStatus: u.execMainStatus,
    };
    return props.map((p) => `${p}=${values[p] ?? ""}`).join("\n");
  }

  /** Ports of the watchers that answer their health endpoint (Prometheus 9090, Grafana 3000). */
  watchersUp = new Set<number>();

  http(url: string): HttpResult {
    const port = Number(new URL(url).port);
    if (port !== 8081) {
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
    if (url.endsWith("/v1/models")) {
      return {
        status: 200,
        body: JSON.stringify({ object: "list", data: [{ id: script.model }] }),
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
