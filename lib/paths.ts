/** Where lychd reads and writes, for a user (rootless) or a system (root) setup. Pure. */
import { UsageError } from "./errors.ts";
import { hostPathProblem } from "./unit_syntax.ts";

export type Mode = "user" | "system";

export interface Locations {
  mode: Mode;
  /** Quadlet .container files. */
  quadletDir: string;
  /** Plain systemd units (lychd-gate.service). */
  unitDir: string;
  /**
   * Runtime folder of the gate's control socket (systemd's RuntimeDirectory=lychd creates it);
   * null in user mode without XDG_RUNTIME_DIR (no user manager either).
   */
  runtimeDir: string | null;
  /** lychd's own data: Prometheus and Grafana config, dashboards, the manifest. */
  dataDir: string;
  configFile: string;
  /** Default host folder for Hugging Face downloads. */
  modelCache: string;
  /** The engines' compile and JIT caches, one folder per engine (lychd's: --purge removes it). */
  compileCacheDir: string;
  /** The target the active soulstone and the watchers are wanted by. */
  bootTarget: string;
  /** `systemctl` arguments that select the manager. */
  systemctlScope: string[];
}

export function locations(mode: Mode, env: (name: string) => string | undefined): Locations {
  if (mode === "system") {
    return {
      mode,
      quadletDir: "/etc/containers/systemd",
      unitDir: "/etc/systemd/system",
      runtimeDir: "/run/lychd",
      dataDir: "/var/lib/lychd",
      configFile: "/etc/lychd/lychd.yaml",
      modelCache: "/var/lib/lychd/models",
      compileCacheDir: "/var/lib/lychd/cache",
      bootTarget: "multi-user.target",
      systemctlScope: [],
    };
  }
  const home = env("HOME");
  if (!home || !home.startsWith("/")) {
    throw new UsageError("HOME is not set to an absolute path; lychd needs it in user mode.");
  }
  // Every folder below ends up in a unit (Volume=): one with `%h` or a blank in it would be
  // expanded or split by systemd and Podman, so it is refused here, wherever it came from.
  const checked = (name: string, value: string) => {
    const problem = hostPathProblem(value.replace(/\/+$/, "") || "/");
    if (problem) {
      throw new UsageError(
        `${name}=${JSON.stringify(value)} ${problem}: lychd puts folders under it into unit ` +
          "files. Run lychd with a plain path in it (or use --system).",
      );
    }
    return value.replace(/\/+$/, "");
  };
  const xdg = (name: string, fallback: string) => {
    const v = env(name);
    // The XDG spec: a relative value is invalid and is ignored.
    return v && v.startsWith("/") ? checked(name, v) : fallback;
  };
  const homeDir = checked("HOME", home);
  const configHome = xdg("XDG_CONFIG_HOME", `${homeDir}/.config`);
  const runtime = env("XDG_RUNTIME_DIR");
  return {
    mode,
    quadletDir: `${configHome}/containers/systemd`,
    // The user manager reads $XDG_CONFIG_HOME/systemd/user (systemd.unit(5), user unit paths).
    unitDir: `${configHome}/systemd/user`,
    runtimeDir: runtime && runtime.startsWith("/")
      ? `${checked("XDG_RUNTIME_DIR", runtime)}/lychd`
      : null,
    dataDir: `${xdg("XDG_DATA_HOME", `${homeDir}/.local/share`)}/lychd`,
    configFile: `${configHome}/lychd/lychd.yaml`,
    modelCache: `${homeDir}/.cache/huggingface`,
    // Beside the model cache, under the home folder (like it, not under XDG_CACHE_HOME, which
    // may point outside the folders the binary may write).
    compileCacheDir: `${homeDir}/.cache/lychd`,
    bootTarget: "default.target",
    systemctlScope: ["--user"],
  };
}
