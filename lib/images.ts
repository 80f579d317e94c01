/** Container images and model files on this host, through Podman and the file system. */
import type { Host } from "./host.ts";

/** true / false, or null when Podman cannot answer (not installed). */
export async function imageExists(host: Host, image: string): Promise<boolean | null> {
  const r = await host.run("podman", ["image", "exists", image]);
  if (r.code === 0) return true;
  if (r.code === 1) return false;
  return null;
}

/** The image's size in bytes, or null if it is not on this host. */
export async function imageSize(host: Host, image: string): Promise<number | null> {
  const r = await host.run("podman", ["image", "inspect", "--format", "{{.Size}}", image]);
  const n = Number(r.stdout.trim());
  return r.code === 0 && Number.isFinite(n) ? n : null;
}

/**
 * Where a Hugging Face model lands in the shared cache (huggingface_hub's layout), or the file
 * itself for a local path; null when the engine keeps its own layout (llama.cpp -hf).
 */
export function modelLocation(cache: string, model: string, hfLayout: boolean): string | null {
  if (model.startsWith("/")) return model;
  if (!hfLayout) return null;
  const repo = model.split(":")[0];
  return `${cache}/hub/models--${repo.replaceAll("/", "--")}`;
}

/** Podman's error for a failed pull, said plainly: what happened and what to do. */
export function explainPullFailure(output: string): string {
  const text = output.toLowerCase();
  if (/no space left on device/.test(text)) return "the disk is full: free space and pull again";
  if (/unauthorized|authentication required|denied: requested access/.test(text)) {
    return "the registry wants a login: podman login <registry>, then pull again";
  }
  if (/manifest unknown|not found|name unknown/.test(text)) {
    return "the registry has no such image or tag: check the image in lychd.yaml";
  }
  if (
    /connection refused|no such host|timeout|network is unreachable|dial tcp|pinging container registry/
      .test(text)
  ) {
    return "the registry cannot be reached: check the network (or a proxy / mirror) and pull again";
  }
  const last = output.trim().split("\n").at(-1) ?? "";
  return last || "podman pull failed";
}

export function formatBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) [n, i] = [n / 1000, i + 1];
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
