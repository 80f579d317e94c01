/** Help texts. Kept beside nothing else so that `--help` loads no template engine. */
import { VERSION } from "./version.ts";

const CONFIG_FLAGS = `Configuration flags (override lychd.yaml; the file is updated to match):
  --engines LIST           engines to install, comma-separated (default vllm,sglang,llama)
  --active ENGINE          the engine that starts at boot (default: the first one)
  --model ENGINE=MODEL     the model an engine serves (repeatable)
  --image ENGINE=IMAGE     a pinned image for an engine (repeatable)
  --gpu SPEC               nvidia (all GPUs), nvidia:0,1 (chosen GPUs), amd or cpu
  --model-cache DIR        host folder for Hugging Face downloads, shared by the engines
  --hf-token-secret NAME   a Podman secret holding the HF token, passed as HF_TOKEN
  --config FILE            lychd.yaml to read and update (default below)
  --system                 root units in /etc/containers/systemd instead of the user's`;

export const HELP: Record<string, string> = {
  main: `lychd ${VERSION}: one inference engine at a time on a GPU host, behind one port (8081)

Usage: lychd <command> [options]

Commands:
  init      write the Quadlet units, Prometheus and Grafana config, and reload systemd
  render    write the same files into a folder, touching nothing else
  help      help for a command: lychd help init

Options:
  -h, --help     this help
  -V, --version  lychd's version

Run \`lychd init --dry-run\` to see every file lychd would write.
`,
  init: `Usage: lychd init [options]

Writes soulstone-<engine>.container for every engine (only one runs at a time: each
Conflicts= with the others), harvester.container (Prometheus) and scribe.container
(Grafana), their config and dashboards; creates Grafana's admin password as a Podman
secret; runs systemctl [--user] daemon-reload. Files lychd did not write, or that were
edited since, are never overwritten without --force.

Options:
  --dry-run      show every file as create / update (with a diff) / unchanged; write nothing
  --force        replace files lychd did not write or that were edited
  --no-reload    do not run systemctl daemon-reload

${CONFIG_FLAGS}

Files (user mode; --system in parentheses):
  units   ~/.config/containers/systemd/    (/etc/containers/systemd/)
  data    ~/.local/share/lychd/            (/var/lib/lychd/)
  config  ~/.config/lychd/lychd.yaml       (/etc/lychd/lychd.yaml)

Exit codes: 0 done, 1 refused (e.g. a conflict), 2 bad flags or config,
3 files written but systemd not reloaded.
`,
  render: `Usage: lychd render --out DIR [options]

Writes the complete set of files that \`lychd init\` would install into DIR:
DIR/quadlet/ (units), DIR/data/ (Prometheus, Grafana), DIR/lychd.yaml. Touches
nothing else: no systemd, no secrets. Re-running updates DIR the same safe way init
does (files edited in DIR are kept unless --force).

Options:
  --out DIR      the folder to write into (created if missing)
  --force        replace files in DIR that lychd did not write or that were edited

${CONFIG_FLAGS}
`,
};

export function helpText(topic: string | null): string | null {
  return HELP[topic ?? "main"] ?? null;
}
