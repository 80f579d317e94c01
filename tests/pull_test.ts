/**
 * lychd pull with a fake `podman` on PATH that records its calls and prints what Podman prints:
 * an image that is present, missing (pulled with progress), or failing (registry unreachable,
 * login needed, disk full). Units and config stay as they were whatever happens.
 */
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { type Sandbox, sandbox } from "./support/cli.ts";

const PODMAN = (log: string) =>
  `#!/bin/sh
echo "podman $*" >> '${log}'
case "$1 $2" in
  "image exists") case "$3" in *present*|*prometheus*|*grafana*) exit 0 ;; *) exit 1 ;; esac ;;
  "secret inspect") exit 0 ;;
esac
if [ "$1" = pull ]; then
  echo "Trying to pull $2..."
  case "$2" in
    *unreachable*) echo "Error: initializing source docker://$2: pinging container registry registry.example: Get \\"https://registry.example/v2/\\": dial tcp: lookup registry.example: no such host" >&2; exit 125 ;;
    *private*) echo "Error: initializing source docker://$2: reading manifest 1 in $2: unauthorized: authentication required" >&2; exit 125 ;;
    *huge*) echo "Getting image source signatures"; echo "Copying blob sha256:aaaa" ; echo "Error: writing blob: storing blob to file \\"/var/tmp/x\\": write /var/tmp/x: no space left on device" >&2; exit 125 ;;
  esac
  echo "Getting image source signatures"
  echo "Copying blob sha256:0123456789ab done"
  echo "Copying config sha256:cdef01234567 done"
  echo "Writing manifest to image destination"
  echo "0123456789abcdef"
  exit 0
fi
if [ "$1" = run ]; then echo "Fetching 4 files: 100%|##########| 4/4"; exit 0; fi
exit 0
`;

async function withPodman(): Promise<Sandbox> {
  const sb = await sandbox();
  await Deno.writeTextFile(`${sb.bin}/podman`, PODMAN(`${sb.bin}/calls.log`), { mode: 0o755 });
  return sb;
}

const IMAGES = [
  "--image",
  "vllm=docker.io/test/present:1",
  "--image",
  "sglang=docker.io/test/missing:1",
  "--image",
  "llama=docker.io/test/unreachable:1",
];

Deno.test("pull: present, pulled with Podman's progress, and a failure explained; the summary", async () => {
  const sb = await withPodman();
  try {
    assertEquals((await sb.run(["init", ...IMAGES])).code, 0);
    const before = await sb.tree();
    const r = await sb.run(["pull"]);
    assertEquals(r.code, 1, r.stdout + r.stderr);
    assertMatch(r.stdout, /^present +docker\.io\/test\/present:1$/m);
    assertMatch(
      r.stdout,
      /^pulling +docker\.io\/test\/missing:1\n +Trying to pull docker\.io\/test\/missing:1\.\.\.\n +Getting image source signatures\n +Copying blob sha256:0123456789ab done/m,
    );
    assertMatch(
      r.stderr,
      /^FAILED +docker\.io\/test\/unreachable:1: the registry cannot be reached/m,
    );
    assertMatch(
      r.stdout,
      /Images: 1 pulled, 3 already present, 1 failed \(docker\.io\/test\/unreachable:1\)\./,
    );
    assertEquals(JSON.stringify(await sb.tree()), JSON.stringify(before), "pull changed a file");
    const calls = await sb.calls();
    assert(calls.includes("podman pull docker.io/test/missing:1"));
    assert(
      !calls.includes("podman pull docker.io/test/present:1"),
      "a present image was pulled again",
    );
  } finally {
    await sb.cleanup();
  }
});

Deno.test("pull: named engines only; a login and a full disk are explained", async () => {
  const sb = await withPodman();
  try {
    assertEquals(
      (await sb.run([
        "init",
        "--image",
        "vllm=docker.io/test/private:1",
        "--image",
        "sglang=docker.io/test/huge:1",
      ]))
        .code,
      0,
    );
    await Deno.writeTextFile(`${sb.bin}/calls.log`, "");
    const r = await sb.run(["pull", "vllm", "sglang"]);
    assertEquals(r.code, 1);
    assertMatch(
      r.stderr,
      /FAILED +docker\.io\/test\/private:1: the registry wants a login: podman login/,
    );
    assertMatch(r.stderr, /FAILED +docker\.io\/test\/huge:1: the disk is full/);
    assertMatch(r.stdout, /Images: 0 pulled, 0 already present, 2 failed/);
    assert(
      !(await sb.calls()).some((c) => c.includes("prometheus")),
      "watchers are pulled only when no engine is named",
    );
    const bad = await sb.run(["pull", "tgi"]);
    assertEquals(bad.code, 2);
    assertMatch(bad.stderr, /unknown engine tgi; configured: vllm, sglang, llama/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("pull --models downloads HF models into the shared cache with the engine's image", async () => {
  const sb = await withPodman();
  try {
    assertEquals(
      (await sb.run(["init", ...IMAGES.slice(0, 4), "--hf-token-secret", "hf-tok"])).code,
      0,
    );
    const r = await sb.run(["pull", "vllm", "llama", "--models"]);
    assertEquals(r.code, 0, r.stderr);
    const run = (await sb.calls()).find((c) => c.startsWith("podman run"));
    assertEquals(
      run,
      `podman run --rm --pull=never -v ${sb.home}/.cache/huggingface:/root/.cache/huggingface:z ` +
        "--secret hf-tok,type=env,target=HF_TOKEN --entrypoint hf docker.io/test/present:1 download Qwen/Qwen2.5-7B-Instruct",
    );
    assertMatch(r.stdout, /Fetching 4 files/);
    assertMatch(r.stdout, /model +llama: this engine fetches its model itself on its first start/);
  } finally {
    await sb.cleanup();
  }
});

Deno.test("init --pull writes the units, then pulls", async () => {
  const sb = await withPodman();
  try {
    const r = await sb.run(["init", "--pull", ...IMAGES.slice(0, 4)]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(
      r.stdout,
      /Pulling the images \(init --pull\):[\s\S]*Images: 2 pulled, 3 already present, 0 failed/,
    );
    assertMatch(
      await sb.read(".config/containers/systemd/soulstone-vllm.container"),
      /^PodmanArgs=--pull=never$/m,
    );
  } finally {
    await sb.cleanup();
  }
});
