/**
 * `lychd doctor`: a preflight of this host for what `init` wrote. Each check passes, warns,
 * fails, or (for a host not set up yet) gives a hint, and says how to fix it. Exit 1 if any
 * check fails.
 */
import { ownership, readManifest } from "../apply.ts";
import type { ConfigOptions, GateSettings } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import { GRAFANA_PORT, PROMETHEUS_PORT, STANDARD_PORT } from "../engines.ts";
import type { Host } from "../host.ts";
import type { Locations } from "../paths.ts";
import { openSetup } from "../setup.ts";
import { showUnits, type UnitProps, unreachable } from "../systemctl.ts";
import { printable } from "../text.ts";
import { type Engine, GATE_SERVICE, resolveEngines, soulstoneService } from "../units/model.ts";

export type Verdict = "pass" | "hint" | "warn" | "fail";

export interface Check {
  verdict: Verdict;
  name: string;
  detail: string;
  fix?: string;
}

/** Where Podman packages put the generator, and where scripts/install-quadlet.sh does. */
export const QUADLET_PATHS = [
  "/usr/libexec/podman/quadlet",
  "/usr/lib/podman/quadlet",
  "/usr/local/libexec/podman/quadlet",
];
export const CDI_SPECS = [
  "/etc/cdi/nvidia.yaml",
  "/etc/cdi/nvidia.json",
  "/var/run/cdi/nvidia.yaml",
  "/var/run/cdi/nvidia.json",
];

export async function doctor(host: Host, options: { config: ConfigOptions }): Promise<number> {
  const setup = await openSetup(host, options.config, { kind: "inspect" });
  const loc = setup.loc;
  const { config } = await loadConfig(host, setup.configPath, [], !setup.installed);
  const engines = resolveEngines(config);
  const checks = [
    await checkPodman(host),
    await checkQuadlet(host),
    ...await checkSystemd(host, loc),
    ...(loc.mode === "user" ? [await checkLinger(host)] : []),
    ...(engines.some((e) => e.gpu.vendor === "nvidia") ? await checkNvidia(host) : []),
    ...await checkDiskSpace(host, [
      ["model cache", config.modelCache ?? loc.modelCache],
      ["compile caches", loc.compileCacheDir],
    ]),
    ...(engines.some((e) => e.gpu.vendor === "amd") ? await checkAmd(host, loc) : []),
    ...await checkPorts(host, loc, engines, config.gate),
    ...await checkUnits(host, loc),
  ];
  for (const c of checks) {
    host.out(`${c.verdict.toUpperCase().padEnd(4)}  ${c.name}: ${c.detail}\n`);
    if (c.fix && c.verdict !== "pass") {
      host.out(`      ${c.verdict === "hint" ? "next" : "fix"}: ${c.fix}\n`);
    }
  }
  const count = (v: Verdict) => checks.filter((c) => c.verdict === v).length;
  const hints = count("hint") ? `, ${count("hint")} hints` : "";
  host.out(
    `\n${count("pass")} passed, ${count("warn")} warnings${hints}, ${count("fail")} failed.\n`,
  );
  return count("fail") > 0 ? 1 : 0;
}

/** "podman version 4.9.3" -> [4, 9, 3]. */
export function parseVersion(text: string): number[] | null {
  const m = text.match(/(\d+)\.(\d+)(?:\.(\d+))?/);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : null;
}

async function checkPodman(host: Host): Promise<Check> {
  const r = await host.run("podman", ["--version"]);
  const name = "podman";
  if (r.code !== 0) {
    return {
      verdict: "fail",
      name,
      detail: "not found",
      fix: "install Podman 4.5 or newer (e.g. apt install podman)",
    };
  }
  const v = parseVersion(r.stdout);
  const text = v ? v.join(".") : r.stdout.trim();
  if (!v || v[0] < 4 || (v[0] === 4 && v[1] < 5)) {
    return {
      verdict: "fail",
      name,
      detail: `${text}: Quadlet needs 4.4 and lychd's units use Secret= (4.5)`,
      fix: "upgrade Podman to 4.5 or newer (Debian 12 ships 4.3.1: use Debian 13 or a backport)",
    };
  }
  if (v[0] < 5) {
    return {
      verdict: "pass",
      name,
      detail: `${text}; lychd needs none of the 5.0 features (Notify=healthy, .pod units, ` +
        "Entrypoint=, repeatable Ulimit=), which this version lacks",
    };
  }
  return { verdict: "pass", name, detail: text };
}

async function checkQuadlet(host: Host): Promise<Check> {
  for (const p of QUADLET_PATHS) {
    if (await host.exists(p)) return { verdict: "pass", name: "Quadlet generator", detail: p };
  }
  return {
    verdict: "fail",
    name: "Quadlet generator",
    detail: `not found (${QUADLET_PATHS.join(", ")})`,
    fix:
      "install a Podman package that ships Quadlet (4.4+); without it systemd never sees lychd's units",
  };
}

/** systemd itself, and for user mode the user's manager, which a root shell or a bare su lacks. */
async function checkSystemd(host: Host, loc: Locations): Promise<Check[]> {
  const r = await host.run("systemctl", ["--version"]);
  if (r.code !== 0) {
    return [{
      verdict: "fail",
      name: "systemd",
      detail: "systemctl not found",
      fix: "lychd needs systemd",
    }];
  }
  const checks: Check[] = [
    { verdict: "pass", name: "systemd", detail: r.stdout.split("\n")[0].trim() },
  ];
  const asRoot = host.env("USER") === "root" || host.env("HOME") === "/root";
  if (loc.mode === "user" && asRoot) {
    checks.push({
      verdict: "warn",
      name: "mode",
      detail: "running as root in user mode: the units would be root's own user units " +
        `(${loc.quadletDir}), run by a root user manager that usually does not exist`,
      fix: "for a system-wide install use --system: `lychd doctor --system`, `lychd init --system`",
    });
  }
  const manager = loc.mode === "user" ? "user manager (systemctl --user)" : "system manager";
  const state = await host.run("systemctl", [...loc.systemctlScope, "is-system-running"]);
  const said = printable((state.stderr || state.stdout).trim());
  if (state.code !== 0 && unreachable(state.code, said)) {
    checks.push({
      verdict: "fail",
      name: manager,
      detail: `not reachable: ${said || `exit ${state.code}`}`,
      fix: loc.mode === "system"
        ? "lychd needs systemd running as PID 1"
        : asRoot
        ? "use --system (root has no user manager)"
        : "log in through a session that starts one (ssh, a console login: it sets " +
          "XDG_RUNTIME_DIR), or enable linger: sudo loginctl enable-linger $USER",
    });
  } else {
    // running, degraded (some unit failed), starting...: reachable is what lychd needs.
    const text = state.stdout.trim() || "reachable";
    checks.push({
      verdict: text === "degraded" ? "warn" : "pass",
      name: manager,
      detail: text,
      ...(text === "degraded"
        ? {
          fix: `see which units failed: systemctl ${[...loc.systemctlScope, "--failed"].join(" ")}`,
        }
        : {}),
    });
  }
  return checks;
}

async function checkLinger(host: Host): Promise<Check> {
  const user = host.env("USER") ?? host.env("HOME")?.split("/").pop() ?? "";
  if (await host.exists(`/var/lib/systemd/linger/${user}`)) {
    return {
      verdict: "pass",
      name: "linger",
      detail: `enabled for ${user}: the units start at boot`,
    };
  }
  return {
    verdict: "warn",
    name: "linger",
    detail: `not enabled for ${user}: user units start only while ${user} is logged in`,
    fix: `sudo loginctl enable-linger ${user}`,
  };
}

async function checkNvidia(host: Host): Promise<Check[]> {
  const checks: Check[] = [];
  const spec = (await Promise.all(CDI_SPECS.map(async (p) => (await host.exists(p)) ? p : null)))
    .find((p) => p);
  checks.push(
    spec ? { verdict: "pass", name: "NVIDIA CDI spec", detail: spec } : {
      verdict: "fail",
      name: "NVIDIA CDI spec",
      detail: `missing (${CDI_SPECS.join(", ")}): AddDevice=nvidia.com/gpu=... cannot resolve`,
      fix:
        "install the NVIDIA Container Toolkit and run `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
    },
  );
  const smi = await host.run("nvidia-smi", ["-L"]);
  const gpus = smi.stdout.split("\n").filter((l) => l.startsWith("GPU "));
  checks.push(
    smi.code === 0 && gpus.length > 0
      ? {
        verdict: "pass",
        name: "nvidia-smi",
        detail: gpus.map((g) => g.replace(/ \(UUID:.*\)$/, "")).join("; "),
      }
      : {
        verdict: "fail",
        name: "nvidia-smi",
        detail: smi.code === 127
          ? "not found"
          : `no GPU listed (${(smi.stderr || smi.stdout).trim() || `exit ${smi.code}`})`,
        fix: "install the NVIDIA driver, or choose gpu: amd or cpu",
      },
  );
  if (spec) checks.push(...await checkCdiDriver(host, spec));
  if (smi.code === 0) checks.push(await checkDevCharLinks(host));
  return checks;
}

/** "580.159.04" from `nvidia-smi --query-gpu=driver_version --format=csv,noheader`. */
export function driverVersion(csv: string): string | null {
  return csv.split("\n").map((l) => l.trim()).find((l) => /^\d+\.\d+/.test(l)) ?? null;
}

/** The driver versions a CDI spec was generated for: the `.so.X.Y.Z` of the libraries it mounts. */
export function cdiDriverVersions(spec: string): string[] {
  return [...new Set([...spec.matchAll(/\.so\.(\d{3}\.\d+(?:\.\d+)?)\b/g)].map((m) => m[1]))];
}

/**
 * A CDI spec is a snapshot of the driver it was generated for: after a driver update it names
 * libraries that are gone, and the engine's container fails to start (or starts without them).
 */
async function checkCdiDriver(host: Host, spec: string): Promise<Check[]> {
  const r = await host.run("nvidia-smi", ["--query-gpu=driver_version", "--format=csv,noheader"]);
  const driver = r.code === 0 ? driverVersion(r.stdout) : null;
  const text = new TextDecoder().decode(await host.readFile(spec) ?? new Uint8Array());
  const versions = cdiDriverVersions(text);
  if (!driver || versions.length === 0) return [];
  const name = "CDI spec and driver";
  return [
    versions.includes(driver)
      ? { verdict: "pass", name, detail: `${spec} matches driver ${driver}` }
      : {
        verdict: "fail",
        name,
        detail:
          `${spec} was generated for driver ${versions.join(", ")}, the driver is ${driver} ` +
          "now: the libraries it mounts are gone",
        fix:
          `regenerate it: sudo nvidia-ctk cdi generate --output=${spec} (after every driver update)`,
      },
  ];
}

/**
 * The known trap (NVIDIA container toolkit #48 and #1227, nvidia-docker #1730): when systemd
 * manages a container's cgroup, the runtime gives systemd the container's devices as
 * /dev/char/MAJOR:MINOR paths; the NVIDIA device nodes have no such links unless someone makes
 * them, so at the next `systemctl daemon-reload` (which lychd runs on every init and swap)
 * systemd re-applies a device list without the GPUs, and the engine fails with "Failed to
 * initialize NVML: Unknown Error". Podman with the cgroupfs manager is not affected.
 */
async function checkDevCharLinks(host: Host): Promise<Check> {
  const name = "GPUs after daemon-reload";
  const info = await host.run("podman", ["info", "--format", "{{.Host.CgroupManager}}"]);
  const manager = (info.code === 0 && info.stdout.trim()) || "unknown";
  if (manager === "cgroupfs") {
    return {
      verdict: "pass",
      name,
      detail: "Podman's cgroup manager is cgroupfs: a daemon-reload cannot take the GPUs away",
    };
  }
  const targets = await Promise.all(
    (await host.listDir("/dev/char")).map((l) => host.readLink(`/dev/char/${l}`)),
  );
  const linked = targets.filter((t) => t !== null && /(^|\/)nvidia/.test(t));
  const hasCtl = linked.some((t) => /nvidiactl$/.test(t!));
  const hasUvm = linked.some((t) => /nvidia-uvm$/.test(t!));
  if (hasCtl && hasUvm) {
    return {
      verdict: "pass",
      name,
      detail: `/dev/char links the NVIDIA devices (${linked.length})`,
    };
  }
  return {
    verdict: "warn",
    name,
    detail:
      `/dev/char has no links to ${
        [hasCtl ? null : "nvidiactl", hasUvm ? null : "nvidia-uvm"].filter((x) => x).join(" and ")
      } and Podman's cgroup manager is ${manager}: after a \`systemctl daemon-reload\` (lychd runs ` +
      'one on every init and swap) running engines can lose their GPUs ("Failed to initialize ' +
      'NVML: Unknown Error")',
    fix:
      "sudo nvidia-ctk system create-dev-char-symlinks --create-all, and at every boot (a udev " +
      "rule: NVIDIA container toolkit issue #48)",
  };
}

/** `df -P -k PATH` -> percent used, or null. */
export function dfUsedPercent(out: string): number | null {
  const line = out.trim().split("\n")[1];
  const m = line?.match(/\s(\d+)%\s/);
  return m ? Number(m[1]) : null;
}

/** The folders that grow by gigabytes (models, compile caches): a full disk fails a load late. */
async function checkDiskSpace(host: Host, folders: [string, string][]): Promise<Check[]> {
  const out: Check[] = [];
  for (const [what, path] of folders) {
    // df needs a path that exists: the nearest existing parent is on the same filesystem.
    let at = path;
    try {
      while (at !== "/" && !(await host.exists(at))) at = at.slice(0, at.lastIndexOf("/")) || "/";
    } catch {
      at = path; // outside lychd's read permission: df (a program) may still look
    }
    const r = await host.run("df", ["-P", "-k", at]);
    const used = r.code === 0 ? dfUsedPercent(r.stdout) : null;
    if (used === null) continue;
    const name = `disk space for the ${what}`;
    const detail = `${path}: its filesystem is ${used}% full`;
    out.push(
      used >= 98
        ? {
          verdict: "fail",
          name,
          detail,
          fix: "free space, or move it (model_cache in lychd.yaml)",
        }
        : used >= 90
        ? {
          verdict: "warn",
          name,
          detail,
          fix: "free space before the next model download or compile",
        }
        : { verdict: "pass", name, detail },
    );
  }
  return out;
}

async function checkAmd(host: Host, loc: Locations): Promise<Check[]> {
  const out: Check[] = [];
  for (const dev of ["/dev/kfd", "/dev/dri"]) {
    const mode = await host.fileMode(dev);
    const name = `AMD ${dev}`;
    if (mode === null) {
      out.push({
        verdict: "fail",
        name,
        detail: "missing",
        fix: "install the amdgpu driver (ROCm)",
      });
    } else if (loc.mode === "user" && (mode & 0o006) !== 0o006) {
      // Not open to everyone: a rootless container reaches it only through the user's groups
      // (the units pass --group-add=keep-groups).
      out.push({
        verdict: "warn",
        name,
        detail: `present, mode ${mode.toString(8)}: only its group may use it`,
        fix:
          "make sure you are in the video and render groups: sudo usermod -aG video,render $USER",
      });
    } else out.push({ verdict: "pass", name, detail: "present" });
  }
  return out;
}

async function checkPorts(
  host: Host,
  loc: Locations,
  engines: Engine[],
  gate: GateSettings,
): Promise<Check[]> {
  const soulstones = engines.map((e) => soulstoneService(e.name));
  const owners: [number, string[]][] = [];
  // Behind the gate, 8081 is the gate's and the engines answer on their own port (those that
  // sleep each on one of their own: docs/warm-swaps.md).
  if (gate.enabled) {
    owners.push([STANDARD_PORT, [GATE_SERVICE]]);
    for (const port of new Set(engines.map((e) => e.hostPort))) {
      owners.push([
        port,
        engines.filter((e) => e.hostPort === port).map((e) => soulstoneService(e.name)),
      ]);
    }
  } else owners.push([STANDARD_PORT, soulstones]);
  owners.push([PROMETHEUS_PORT, ["harvester.service"]], [GRAFANA_PORT, ["scribe.service"]]);
  const units = owners.flatMap(([, u]) => u);
  const states: Record<string, UnitProps> = await showUnits(
    host,
    loc.systemctlScope,
    units,
    ["ActiveState"],
  ).catch(() => ({}));
  // Something answering a TCP connect on the port is what would collide with lychd's units.
  const open = await Promise.all(owners.map(([port]) => host.portOpen(port)));
  return owners.map(([port, candidates], i) => {
    const name = `port ${port}`;
    if (!open[i]) return { verdict: "pass", name, detail: "free" };
    const owner = candidates.find((u) => states[u]?.ActiveState === "active");
    return owner ? { verdict: "pass", name, detail: `held by lychd's ${owner}` } : {
      verdict: "fail",
      name,
      detail: "in use by something that is not lychd's",
      fix: `find it with \`ss -ltnp 'sport = :${port}'\` and stop it`,
    };
  });
}

async function checkUnits(host: Host, loc: Locations): Promise<Check[]> {
  const manifest = await readManifest(host, `${loc.dataDir}/manifest.json`);
  const paths = Object.keys(manifest.files);
  if (paths.length === 0) {
    // A fresh host is not a broken one: doctor is what you run before init.
    return [{
      verdict: "hint",
      name: "lychd's files",
      detail: `not set up yet in ${loc.mode} mode (nothing written)`,
      fix: loc.mode === "system" ? "lychd init --system" : "lychd init",
    }];
  }
  const missing: string[] = [];
  const edited: string[] = [];
  for (const p of paths) {
    const bytes = await host.readFile(p);
    if (bytes === null) missing.push(p);
    else if (await ownership(manifest, p, bytes) !== "lychd") edited.push(p);
  }
  const out: Check[] = [];
  if (missing.length) {
    out.push({
      verdict: "fail",
      name: "lychd's files",
      detail: `missing: ${missing.join(", ")}`,
      fix: "lychd init",
    });
  }
  if (edited.length) {
    out.push({
      verdict: "warn",
      name: "lychd's files",
      detail: `edited since lychd wrote them: ${edited.join(", ")}`,
      fix: "keep the edits, or restore lychd's version with `lychd init --force`",
    });
  }
  if (!missing.length && !edited.length) {
    out.push({
      verdict: "pass",
      name: "lychd's files",
      detail: `${paths.length} present and unmodified`,
    });
  }
  return out;
}
