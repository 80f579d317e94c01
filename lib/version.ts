import denoJson from "../deno.json" with { type: "json" };

export const VERSION: string = denoJson.version;

/** Baked into compiled binaries by scripts/compile.ts (deno compile --env-file); "dev" otherwise. */
export function commit(): string {
  try {
    return Deno.env.get("LYCHD_COMMIT") || "dev";
  } catch {
    return "dev";
  }
}

export function versionLine(): string {
  return `lychd ${VERSION} (commit ${commit()}, deno ${Deno.version.deno})`;
}
