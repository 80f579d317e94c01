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
  swap      make an engine the one on port 8081; returns when it really serves
  gate      lychd's server on 8081 that holds requests through swaps (run by systemd)
  status    which engine runs, whether it is healthy, the watchers' URLs
  stop      stop the engine (--all: the watchers too)
  logs      an engine's or watcher's journal
  pull      fetch the images (and with --models the model weights) ahead of time
  doctor    check this host: Podman, Quadlet, systemd, GPU access, ports, lychd's files
  uninstall stop everything and remove the files lychd wrote (--purge: data too)
  completions  print a completion script: lychd completions bash|zsh|fish
  help      help for a command: lychd help swap

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
  --force        replace files lychd did not write or that were edited; stop engines
                 that run whose port the change moves (refused without it)
  --no-reload    do not run systemctl daemon-reload
  --pull         then fetch the images (lychd pull)

${CONFIG_FLAGS}

Files (user mode; --system in parentheses):
  units   ~/.config/containers/systemd/    (/etc/containers/systemd/)
  data    ~/.local/share/lychd/            (/var/lib/lychd/)
  config  ~/.config/lychd/lychd.yaml       (/etc/lychd/lychd.yaml)

Exit codes: 0 done, 1 refused (e.g. a conflict), 2 bad flags or config (or --config
names another file than the installed units came from), 3 files written but systemd
not reloaded. init records lychd.yaml's path; later commands use it without --config.
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

const SETUP = `  --system       the root setup (/etc/containers/systemd) instead of the user's
  --config FILE  lychd.yaml to read (default: the one init recorded, else the mode's
                 usual place); another file than the recorded one is refused`;

Object.assign(HELP, {
  swap: `Usage: lychd swap ENGINE [--timeout DURATION] [--no-wait] [--no-rollback]
                  [--drain-timeout DURATION | --no-drain]

Makes ENGINE the engine on 127.0.0.1:8081 and the one that starts at boot. systemd
stops the running engine first (Conflicts= and After= in the units), then starts ENGINE;
lychd waits until its health path answers 200 and /v1/models lists its model, showing
the phase and the elapsed time, and reports how long each phase took. If the unit fails
or readiness times out, it prints the end of the journal and brings back the engine that
served before (and waits for it too). Two swaps never interleave: the second waits.
Behind the gate (lychd-gate.service on 8081), new requests are held for the whole swap,
the old engine's requests in flight finish first (the drain), and the held requests go
to ENGINE once it serves, or to the engine rolled back to.

Options:
  --timeout DURATION  how long to wait for readiness (default: the engine's start_timeout, 15m)
  --no-wait           return once the container runs
  --no-rollback       on failure, leave things as they are
  --drain-timeout DURATION  how long the old engine's requests in flight may take
                      (default: gate.drain_timeout, 30s); then it is stopped anyway
  --no-drain          stop the old engine at once, cutting off its requests in flight
${SETUP}

Exit codes: 0 ENGINE serves (or already did); 1 nothing was changed (e.g. its image is
missing); 2 bad arguments; 4 the swap failed and nothing serves; 5 the swap failed and
the previous engine serves again; 8 systemd cannot be reached.
`,
  gate: `Usage: lychd gate [--system] [--config FILE]

lychd's own server on 127.0.0.1:8081 (gate.listen: all: every address), in front of the
engine on the engine port (gate.engine_port, 18081). systemd runs it as lychd-gate.service
(init writes and starts it); run by hand only to debug. It forwards every request to the
engine as it is, holds requests while no engine serves (up to gate.hold_timeout and
gate.max_held; then 503 with Retry-After), serves its own metrics on /lychd/metrics, and
takes \`lychd swap\`'s requests through a control folder only its user can enter. With
gate.on_demand: true, a request naming another engine's model swaps to it.
${SETUP}

Runs until SIGTERM; then lets the requests in flight finish and exits 0.
`,
  status: `Usage: lychd status [--json]

Every soulstone's unit state, which one is active and whether it is healthy (its health
path and /v1/models on 127.0.0.1:8081), the model(s) it serves, the harvester and scribe
with their URLs. --json prints the same as a stable, versioned object (README).

Exit codes: 0 an engine is active and healthy; 6 active but not healthy; 7 none active;
8 systemd cannot be reached.
${SETUP}
`,
  stop: `Usage: lychd stop [--all]

Stops the engine; the harvester and scribe keep running. --all stops them too.
${SETUP}
`,
  logs: `Usage: lychd logs [ENGINE|harvester|scribe] [-f] [-n N]

Shows a unit's journal: by default the active engine (or the last one that ran).
  -f, --follow     keep printing new lines
  -n, --lines N    how many lines (default 50)
${SETUP}
`,
  pull: `Usage: lychd pull [ENGINE...] [--models]

Fetches the images of the named engines (default: all, plus the harvester and scribe)
with podman pull, showing its progress; images already here are skipped. The engine
units never pull during a swap (--pull=never), so this is how images arrive.
  --models    also download each engine's model into the shared model cache, with the
              engine's own image (hf download); the HF token secret is used if set
${SETUP}

Exit 1 if anything failed; units and config are never changed.
`,
  uninstall: `Usage: lychd uninstall [--purge] [--dry-run] [--force]

Stops every lychd unit, removes exactly the files lychd wrote (its manifest) that nobody
edited since, and reloads systemd. Edited files are listed and kept unless --force.
Prometheus' and Grafana's data (Podman volumes), the Grafana password and lychd.yaml are
kept unless --purge. The model cache is never touched. A second uninstall does nothing.
  --dry-run   list what would be stopped and removed
${SETUP}
`,
  completions: `Usage: lychd completions bash|zsh|fish

Prints a completion script. bash: source <(lychd completions bash);
zsh: lychd completions zsh > "\${fpath[1]}/_lychd"; fish: lychd completions fish >
~/.config/fish/completions/lychd.fish
`,
  doctor: `Usage: lychd doctor

Checks this host: Podman (4.5+; which 5.x features it lacks), the Quadlet generator,
systemd, linger (user mode), the NVIDIA CDI spec and nvidia-smi (NVIDIA engines),
/dev/kfd and /dev/dri (AMD), ports 8081/9090/3000 free or held by lychd's own units, and
the files init wrote present and unmodified. Each check passes, warns or fails with the
fix. Exit 1 if any check fails.
${SETUP}
`,
});

export function helpText(topic: string | null): string | null {
  return HELP[topic ?? "main"] ?? null;
}
