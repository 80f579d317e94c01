/** doctor on a host that passes and one that fails, with real nvidia-smi output as the GPU's answer. */
import { doctor, parseVersion } from "../lib/commands/doctor.ts";
import { init } from "../lib/commands/init.ts";
import type { RunResult } from "../lib/host.ts";
import { assert, assertDeep, assertEquals, assertMatch } from "./support/assert.ts";
import { FakeSystemd } from "./support/fake_systemd.ts";

const NVIDIA_SMI_L = "GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"; // fixture nvidia-smi-580
/** The capture's driver (nvidia-smi-580: "DRIVER version : 580.159.04"). */
const DRIVER = { code: 0, stdout: "580.159.04\n", stderr: "" };
/**
 * The lines of a CDI spec that name the driver's libraries, as `nvidia-ctk cdi generate` writes
 * them (INVENTED for the test: the captured host had no CDI spec).
 */
const cdiSpec = (driver: string) =>
  `cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits:\n  mounts:\n` +
  `  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.${driver}\n` +
  `    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.${driver}\n` +
  `  - hostPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.${driver}\n`;
/** `df -P -k` (coreutils' format) with `used`% used. */
const df = (used: number) => ({
  code: 0,
  stdout: `Filesystem     1024-blocks      Used Available Capacity Mounted on\n` +
    `/dev/nvme0n1p2  1921725720 ${Math.round(19217257 * used)} 100000000      ${used}% /\n`,
  stderr: "",
});
const setup = { system: false, configPath: null, overrides: [] };

function host(programs: Record<string, RunResult>, files: Record<string, string>) {
  const fs = new FakeSystemd(
    { llama: { model: "m" }, vllm: { model: "m" } },
    files,
    null,
    (program, args) =>
      programs[[program, ...args].join(" ")] ?? (program in programs ? programs[program] : null),
  );
  return { fs };
}

Deno.test("doctor: a good host passes every check", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "nvidia-smi -L": { code: 0, stdout: NVIDIA_SMI_L, stderr: "" },
    "nvidia-smi --query-gpu=driver_version --format=csv,noheader": DRIVER,
    "podman info --format {{.Host.CgroupManager}}": { code: 0, stdout: "systemd\n", stderr: "" },
    df: df(41),
  }, {
    "/usr/libexec/podman/quadlet": "",
    "/var/lib/systemd/linger/ada": "",
    "/etc/cdi/nvidia.yaml": cdiSpec("580.159.04"),
  });
  // What `nvidia-ctk system create-dev-char-symlinks` makes (majors from the capture's ls).
  fs.host.links.set("/dev/char/195:255", "../nvidiactl");
  fs.host.links.set("/dev/char/195:0", "../nvidia0");
  fs.host.links.set("/dev/char/238:0", "../nvidia-uvm");
  // The default layout: the gate on 8081, the engine behind it on 18081.
  fs.host.openPorts.add(8081);
  fs.host.openPorts.add(18081);
  await init(fs.host, {
    config: { ...setup, overrides: [{ path: ["engines"], value: ["llama", "vllm"], flag: "x" }] },
    dryRun: false,
    force: false,
    reload: true,
  });
  fs.activate("soulstone-llama.service");
  fs.activate("lychd-gate.service");
  fs.host.stdout = "";
  assertEquals(await doctor(fs.host, { config: setup }), 0, fs.host.stdout);
  const out = fs.host.stdout;
  assertMatch(out, /^PASS {2}podman: 5\.4\.2$/m);
  assertMatch(out, /^PASS {2}Quadlet generator: \/usr\/libexec\/podman\/quadlet$/m);
  assertMatch(out, /^PASS {2}systemd: systemd 252/m);
  assertMatch(out, /^PASS {2}NVIDIA CDI spec: \/etc\/cdi\/nvidia\.yaml$/m);
  assertMatch(out, /^PASS {2}nvidia-smi: GPU 0: NVIDIA H200$/m);
  assertMatch(out, /^PASS {2}port 8081: held by lychd's lychd-gate\.service$/m);
  assertMatch(out, /^PASS {2}port 18081: held by lychd's soulstone-llama\.service$/m);
  assertMatch(out, /^PASS {2}port 9090: free$/m);
  assertMatch(out, /^PASS {2}lychd's files: 12 present and unmodified$/m);
  assertMatch(
    out,
    /^PASS {2}CDI spec and driver: \/etc\/cdi\/nvidia\.yaml matches driver 580\.159\.04$/m,
  );
  assertMatch(
    out,
    /^PASS {2}GPUs after daemon-reload: \/dev\/char links the NVIDIA devices \(3\)$/m,
  );
  assertMatch(
    out,
    /^PASS {2}disk space for the model cache: \/home\/ada\/\.cache\/huggingface: its filesystem is 41% full$/m,
  );
  assertMatch(out, /0 failed\.$/m);
});

Deno.test("doctor: without the gate (gate: false), port 8081 is the active engine's", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    df: df(41),
  }, { "/usr/libexec/podman/quadlet": "" });
  fs.host.openPorts.add(8081);
  const config = {
    ...setup,
    overrides: [{ path: ["engines"], value: ["llama"], flag: "x" }, {
      path: ["gate"],
      value: false,
      flag: "x",
    }],
  };
  assertEquals(await init(fs.host, { config, dryRun: false, force: false, reload: true }), 0);
  fs.activate("soulstone-llama.service");
  fs.host.stdout = "";
  await doctor(fs.host, { config: setup });
  assertMatch(fs.host.stdout, /^PASS {2}port 8081: held by lychd's soulstone-llama\.service$/m);
  assert(!fs.host.stdout.includes("port 18081"), fs.host.stdout);
  // No unit of lychd's active: whatever holds 8081 is something else.
  fs.units.clear();
  fs.host.stdout = "";
  await doctor(fs.host, { config: setup });
  assertMatch(fs.host.stdout, /^FAIL {2}port 8081: in use by something that is not lychd's$/m);
});

Deno.test("doctor: the GPU host's traps: a CDI spec older than the driver, no /dev/char links, a full disk", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "nvidia-smi -L": { code: 0, stdout: NVIDIA_SMI_L, stderr: "" },
    "nvidia-smi --query-gpu=driver_version --format=csv,noheader": DRIVER,
    "podman info --format {{.Host.CgroupManager}}": { code: 0, stdout: "systemd\n", stderr: "" },
    df: df(99),
  }, { "/etc/cdi/nvidia.yaml": cdiSpec("570.133.20") });
  assertEquals(await doctor(fs.host, { config: setup }), 1);
  const out = fs.host.stdout;
  assertMatch(
    out,
    /^FAIL {2}CDI spec and driver: \/etc\/cdi\/nvidia\.yaml was generated for driver 570\.133\.20, the driver is 580\.159\.04 now.*\n +fix: regenerate it: sudo nvidia-ctk cdi generate --output=\/etc\/cdi\/nvidia\.yaml/m,
  );
  assertMatch(
    out,
    /^WARN {2}GPUs after daemon-reload: \/dev\/char has no links to nvidiactl and nvidia-uvm and Podman's cgroup manager is systemd.*Failed to initialize NVML.*\n +fix: sudo nvidia-ctk system create-dev-char-symlinks --create-all/m,
  );
  assertMatch(
    out,
    /^FAIL {2}disk space for the compile caches: \/home\/ada\/\.cache\/lychd: its filesystem is 99% full/m,
  );

  // With the cgroupfs manager a daemon-reload cannot take the GPUs away; 92% full is a warning.
  const { fs: fs2 } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "nvidia-smi -L": { code: 0, stdout: NVIDIA_SMI_L, stderr: "" },
    "podman info --format {{.Host.CgroupManager}}": { code: 0, stdout: "cgroupfs\n", stderr: "" },
    df: df(92),
  }, {});
  await doctor(fs2.host, { config: setup });
  assertMatch(
    fs2.host.stdout,
    /^PASS {2}GPUs after daemon-reload: Podman's cgroup manager is cgroupfs/m,
  );
  assertMatch(fs2.host.stdout, /^WARN {2}disk space for the model cache: .*92% full/m);
});

Deno.test("doctor: a bad host fails with the fix for each problem", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 4.3.1\n", stderr: "" },
    "nvidia-smi": { code: 127, stdout: "", stderr: "nvidia-smi: not found" },
  }, {});
  fs.host.openPorts.add(8081);
  fs.host.env = (n: string) => ({ HOME: "/home/ada", USER: "ada" } as Record<string, string>)[n];
  assertEquals(await doctor(fs.host, { config: setup }), 1);
  const out = fs.host.stdout;
  assertMatch(out, /^FAIL {2}podman: 4\.3\.1: Quadlet needs 4\.4/m);
  assertMatch(out, /^FAIL {2}Quadlet generator: not found/m);
  assertMatch(
    out,
    /^WARN {2}linger: not enabled for ada.*\n +fix: sudo loginctl enable-linger ada$/m,
  );
  assertMatch(
    out,
    /^FAIL {2}NVIDIA CDI spec: missing.*\n +fix: install the NVIDIA Container Toolkit and run `sudo nvidia-ctk cdi generate/m,
  );
  assertMatch(out, /^FAIL {2}nvidia-smi: not found/m);
  assertMatch(out, /^FAIL {2}port 8081: in use by something that is not lychd's/m);
  // Not set up yet is where every host starts: a hint, not a failure.
  assertMatch(
    out,
    /^HINT {2}lychd's files: not set up yet in user mode \(nothing written\)\n +next: lychd init$/m,
  );
  assert(!/^FAIL {2}lychd's files/m.test(out));
});

Deno.test("doctor on a fresh host: only the hint to run init, and exit 0", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "nvidia-smi -L": { code: 0, stdout: NVIDIA_SMI_L, stderr: "" },
    "podman info --format {{.Host.CgroupManager}}": { code: 0, stdout: "cgroupfs\n", stderr: "" },
  }, {
    // Where scripts/install-quadlet.sh puts the generator on a host whose Podman lacks it.
    "/usr/local/libexec/podman/quadlet": "",
    "/var/lib/systemd/linger/ada": "",
    "/etc/cdi/nvidia.yaml": "cdiVersion: 0.5.0\n",
  });
  assertEquals(await doctor(fs.host, { config: setup }), 0, fs.host.stdout);
  assertMatch(
    fs.host.stdout,
    /^PASS {2}Quadlet generator: \/usr\/local\/libexec\/podman\/quadlet$/m,
  );
  assertMatch(fs.host.stdout, /^PASS {2}user manager \(systemctl --user\): running$/m);
  assertMatch(fs.host.stdout, /^HINT {2}lychd's files: not set up yet/m);
  assertMatch(fs.host.stdout, /\d+ passed, 0 warnings, 1 hints, 0 failed\.$/m);
});

Deno.test("doctor as root in user mode says so, and a missing user manager is a failure with the fix", async () => {
  const noBus: RunResult = {
    code: 1,
    stdout: "",
    stderr: "Failed to connect to bus: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not defined",
  };
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "systemctl --user is-system-running": noBus,
  }, {});
  fs.host.env = (n: string) => ({ HOME: "/root", USER: "root" } as Record<string, string>)[n];
  assertEquals(await doctor(fs.host, { config: setup }), 1);
  const out = fs.host.stdout;
  assertMatch(
    out,
    /^WARN {2}mode: running as root in user mode.*\/root\/\.config\/containers\/systemd/m,
  );
  assertMatch(out, /fix: for a system-wide install use --system: `lychd doctor --system`/);
  assertMatch(
    out,
    /^FAIL {2}user manager \(systemctl --user\): not reachable: Failed to connect to bus.*\n +fix: use --system/m,
  );

  // The same host as a user without a session: the fix is a login or linger, not --system.
  const user = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "systemctl --user is-system-running": noBus,
  }, {}).fs;
  user.host.env = (n: string) => ({ HOME: "/home/ada", USER: "ada" } as Record<string, string>)[n];
  assertEquals(await doctor(user.host, { config: setup }), 1);
  assert(!user.host.stdout.includes("mode: running as root"));
  assertMatch(
    user.host.stdout,
    /not reachable: .*\n +fix: log in through a session .*enable-linger/,
  );

  // system mode as root: the system manager, no user-mode warning.
  const sys = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
    "systemctl is-system-running": { code: 1, stdout: "degraded\n", stderr: "" },
  }, {}).fs;
  sys.host.env = (n: string) => ({ HOME: "/root", USER: "root" } as Record<string, string>)[n];
  await doctor(sys.host, { config: { ...setup, system: true } });
  assert(!sys.host.stdout.includes("mode: running as root"));
  assertMatch(sys.host.stdout, /^WARN {2}system manager: degraded\n +fix: .*systemctl --failed$/m);
  assertMatch(sys.host.stdout, /next: lychd init --system$/m);
});

Deno.test("doctor: helpers", () => {
  assertDeep(parseVersion("podman version 4.9.3"), [4, 9, 3]);
});

Deno.test("doctor: AMD devices present, missing, or reachable only through groups", async () => {
  const { fs } = host({
    "podman --version": { code: 0, stdout: "podman version 5.4.2\n", stderr: "" },
  }, {});
  await init(fs.host, {
    config: { ...setup, overrides: [{ path: ["gpu"], value: "amd", flag: "--gpu" }] },
    dryRun: false,
    force: false,
    reload: true,
  });
  fs.host.files.set("/dev/kfd", { data: new Uint8Array(), mode: 0o660 });
  fs.host.stdout = "";
  await doctor(fs.host, { config: setup });
  assertMatch(
    fs.host.stdout,
    /^WARN {2}AMD \/dev\/kfd: present, mode 660: only its group may use it\n +fix: .*usermod -aG video,render/m,
  );
  assertMatch(fs.host.stdout, /^FAIL {2}AMD \/dev\/dri: missing/m);
  assert(!fs.host.stdout.includes("NVIDIA"), "no NVIDIA checks for an AMD setup");
});
