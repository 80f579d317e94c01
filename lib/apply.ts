/**
 * Plan -> disk. First every planned file is compared with what is there (`diffPlan`, read
 * only); only if nothing is in the way are the files written (`applyChanges`).
 *
 * Ownership: the manifest records the sha256 of every file lychd wrote. A file on disk that
 * matches its recorded hash is lychd's and may be replaced; any other existing file (not
 * written by lychd, or edited since) is a conflict that stops the whole run unless --force.
 *
 * Crash safety: each file is replaced atomically (temp + rename). Before the first write the
 * manifest is rewritten to accept both the old and the new hash of every file about to change,
 * and only after the last write is it narrowed to the new hashes. A run killed at any point
 * thus leaves files that are each old or new, all recognised as lychd's by the next run.
 */
import { LychdError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { Plan, PlannedFile, Root } from "./plan.ts";

export interface Manifest {
  version: 1;
  /** Absolute path -> accepted sha256 hashes (one, or two while a run is in progress). */
  files: Record<string, string[]>;
  /**
   * The lychd.yaml the units were rendered from (lib/setup.ts), and whether lychd created it
   * (then `uninstall --purge` may delete it; a file the user wrote is theirs).
   */
  config?: ManifestConfig;
}

export interface ManifestConfig {
  path: string;
  writtenByLychd: boolean;
}

export type Action = "create" | "update" | "unchanged" | "remove" | "conflict" | "keep-edited";

export interface Change {
  path: string;
  action: Action;
  /** Why a conflict or a kept file: for the message. */
  reason?: string;
  before: string | null;
  file: PlannedFile | null;
  newHash: string | null;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export async function sha256(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Whose the bytes at `path` are, by the manifest: "lychd" (exactly what lychd wrote), "edited"
 * (lychd wrote the file, someone changed it since), "foreign" (lychd never wrote it). The one
 * ownership check, for init, render, swap, uninstall and doctor.
 */
export async function ownership(
  manifest: Manifest,
  path: string,
  bytes: Uint8Array,
): Promise<"lychd" | "edited" | "foreign"> {
  const known = manifest.files[path];
  if (!known) return "foreign";
  return known.includes(await sha256(bytes)) ? "lychd" : "edited";
}

export async function readManifest(host: Host, path: string): Promise<Manifest> {
  const bytes = await host.readFile(path);
  if (bytes === null) return { version: 1, files: {} };
  try {
    const m = JSON.parse(decoder.decode(bytes));
    const config = m?.config;
    const configOk = config === undefined ||
      (typeof config?.path === "string" && typeof config?.writtenByLychd === "boolean");
    if (m?.version === 1 && typeof m.files === "object" && m.files !== null && configOk) {
      return m as Manifest;
    }
  } catch { /* reported below */ }
  throw new LychdError(
    `${path} is not a lychd manifest. lychd uses it to know which files it wrote; ` +
      `move it away and run again with --force to take over the existing files.`,
  );
}

export async function diffPlan(
  plan: Plan,
  roots: Record<Root, string>,
  manifest: Manifest,
  host: Host,
  force: boolean,
): Promise<Change[]> {
  const changes: Change[] = [];
  const planned = new Set<string>();
  for (const file of plan.files) {
    const path = `${roots[file.root]}/${file.path}`;
    planned.add(path);
    const current = await host.readFile(path);
    const newHash = await sha256(file.content);
    const before = current === null ? null : decoder.decode(current);
    // The user's own file (lychd.yaml) keeps the mode they gave it.
    const mode = !file.guarded && current !== null ? await host.fileMode(path) : null;
    const change = { path, before, file: mode === null ? file : { ...file, mode }, newHash };
    if (current === null) {
      changes.push({ ...change, action: "create" });
    } else if (before === file.content) {
      changes.push({ ...change, action: "unchanged" });
    } else if (!file.guarded || force) {
      changes.push({ ...change, action: "update" });
    } else {
      const owner = await ownership(manifest, path, current);
      if (owner === "lychd") changes.push({ ...change, action: "update" });
      else {
        changes.push({
          ...change,
          action: "conflict",
          reason: owner === "edited" ? "edited since lychd wrote it" : "not written by lychd",
        });
      }
    }
  }
  // Files lychd wrote earlier that the plan no longer has (e.g. an engine dropped from the list).
  for (const path of Object.keys(manifest.files)) {
    if (planned.has(path)) continue;
    const current = await host.readFile(path);
    if (current === null) continue;
    const edited = await ownership(manifest, path, current) !== "lychd";
    changes.push({
      path,
      before: decoder.decode(current),
      file: null,
      newHash: null,
      action: edited && !force ? "keep-edited" : "remove",
      reason: edited ? "edited since lychd wrote it" : undefined,
    });
  }
  return changes;
}

export function conflictError(changes: Change[]): LychdError | null {
  const conflicts = changes.filter((c) => c.action === "conflict");
  if (conflicts.length === 0) return null;
  const lines = conflicts.map((c) => `  ${c.path}: ${c.reason}`);
  return new LychdError(
    `lychd will not overwrite ${conflicts.length === 1 ? "this file" : "these files"}:\n` +
      `${lines.join("\n")}\n` +
      "Nothing was written. Move your version away, or run again with --force to replace it " +
      "(see the differences first with --dry-run).",
  );
}

/** Write every create/update, remove stale files, keep the manifest true at every step. */
export async function applyChanges(
  changes: Change[],
  manifest: Manifest,
  manifestPath: string,
  host: Host,
  config: ManifestConfig | undefined = manifest.config,
): Promise<Manifest> {
  const conflict = conflictError(changes);
  if (conflict) throw conflict;
  await removeOrphanedTemps(host, [...changes.map((c) => c.path), manifestPath]);

  const writes = changes.filter((c) => c.action === "create" || c.action === "update");
  const removals = changes.filter((c) => c.action === "remove");
  const final: Manifest = { version: 1, files: {}, ...(config ? { config } : {}) };
  for (const c of changes) {
    if (c.file?.guarded && c.newHash) final.files[c.path] = [c.newHash];
  }
  if (writes.length === 0 && removals.length === 0) {
    if (manifestText(final) !== manifestText(manifest)) {
      await writeManifest(host, manifestPath, final);
    }
    return final;
  }

  // Intent: old and new versions both count as lychd's until the last write is done.
  // The config record changes only with the final manifest: a run killed before lychd.yaml was
  // written must not record it as the file the units came from.
  const intent: Manifest = { ...manifest, files: { ...manifest.files } };
  for (const c of writes) {
    if (!c.file?.guarded) continue;
    const old = c.before === null ? [] : [await sha256(c.before)];
    intent.files[c.path] = [...new Set([...old, ...(manifest.files[c.path] ?? []), c.newHash!])];
  }
  await writeManifest(host, manifestPath, intent);

  for (const c of writes) {
    try {
      await host.mkdirp(c.path.slice(0, c.path.lastIndexOf("/")), 0o755);
      // A unit whose only change is its [Install] section (the boot engine moved) keeps its
      // time: a running engine runs what it says, and swap must not think it stale (swap's
      // startedBefore). Engines asleep run through swaps and inits, so this is every such unit.
      const keptTime = c.action === "update" &&
          withoutInstall(c.before) === withoutInstall(c.file!.content)
        ? await host.modifiedAt(c.path)
        : null;
      await host.writeFileAtomic(c.path, encoder.encode(c.file!.content), c.file!.mode);
      if (keptTime !== null) await host.setModifiedAt(c.path, keptTime);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable) throw e;
      const done = writes.indexOf(c);
      const hint = e instanceof Deno.errors.PermissionDenied
        ? "Fix the permissions (root units, --system, need root)"
        : "Fix the cause (disk space, a read-only folder)";
      throw new LychdError(
        `could not write ${c.path}: ${(e as Error).message}.\n` +
          `lychd stopped there (${done} of ${writes.length} files written): each file is either its ` +
          `old or its new version, nothing is half-written. ${hint} and run the same command again ` +
          "to finish.",
      );
    }
  }
  for (const c of removals) await host.remove(c.path);

  await writeManifest(host, manifestPath, final);
  return final;
}

/**
 * Temp files a killed run left behind (`.NAME.lychd-tmp-XXXXXXXX` beside NAME): the rename never
 * happened, so NAME is intact; the temp is only litter.
 */
async function removeOrphanedTemps(host: Host, paths: string[]): Promise<void> {
  const byDir = new Map<string, Set<string>>();
  for (const p of paths) {
    const dir = p.slice(0, p.lastIndexOf("/"));
    byDir.set(dir, (byDir.get(dir) ?? new Set()).add(p.slice(p.lastIndexOf("/") + 1)));
  }
  for (const [dir, names] of byDir) {
    for (const entry of await host.listDir(dir)) {
      const m = entry.match(/^\.(.+)\.lychd-tmp-[0-9a-f]{8}$/);
      if (m && names.has(m[1])) await host.remove(`${dir}/${entry}`);
    }
  }
}

function manifestText(manifest: Manifest): string {
  const sorted = Object.fromEntries(
    Object.entries(manifest.files).sort(([a], [b]) => a < b ? -1 : 1),
  );
  const out: Manifest = {
    version: 1,
    ...(manifest.config ? { config: manifest.config } : {}),
    files: sorted,
  };
  return JSON.stringify(out, null, 2) + "\n";
}

/** The one writer of the manifest (init, render, swap, uninstall): sorted, 0600, atomic. */
export async function writeManifest(host: Host, path: string, manifest: Manifest): Promise<void> {
  await host.mkdirp(path.slice(0, path.lastIndexOf("/")), 0o755);
  await host.writeFileAtomic(path, encoder.encode(manifestText(manifest)), 0o600);
}

/** A unit's text without its [Install] section (and the comments right above it). */
export function withoutInstall(text: string | null | undefined): string {
  return (text ?? "").replace(/\n(#[^\n]*\n)*\[Install\][\s\S]*$/, "\n").trimEnd();
}
