/** Where lychd reads and writes, for a user (rootless) or a system (root) setup. Pure. */
import { LychdError } from "./errors.ts";

export type Mode = "user" | "system";

export interface Locations {
  mode: Mode;
  /** Quadlet .container files. */
  quadletDir: string;
  /** lychd's own data: Prometheus and Grafana config, dashboards, the manifest. */
  dataDir: string;
  configFile: string;
  /** Default host folder for Hugging Face downloads. */
  modelCache: string;
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
      dataDir: "/var/lib/lychd",
      configFile: "/etc/lychd/lychd.yaml",
      modelCache: "/var/lib/lychd/models",
      bootTarget: "multi-user.target",
      systemctlScope: [],
    };
  }
  const home = env("HOME");
  if (!home || !home.startsWith("/")) {
    throw new LychdError("HOME is not set to an absolute path; lychd needs it in user mode.");
  }
  const xdg = (name: string, fallback: string) => {
    const v = env(name);
    return v && v.startsWith("/") ? v : fallback;
  };
  const configHome = xdg("XDG_CONFIG_HOME", `${home}/.config`);
  return {
    mode,
    quadletDir: `${configHome}/containers/systemd`,
    dataDir: `${xdg("XDG_DATA_HOME", `${home}/.local/share`)}/lychd`,
    configFile: `${configHome}/lychd/lychd.yaml`,
    modelCache: `${home}/.cache/huggingface`,
    bootTarget: "default.target",
    systemctlScope: ["--user"],
  };
}
