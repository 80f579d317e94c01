/**
 * Deno's permission errors in lychd's words. The binary's permissions are fixed at compile time
 * (deno.json "permissions.default", read here so the message and the grant cannot disagree),
 * so Deno's own advice ("run again with the --allow-read flag") is no use to an operator.
 */
import denoJson from "../deno.json" with { type: "json" };

const granted = denoJson.permissions.default;

export function permissionMessage(denoMessage: string): string {
  const m = denoMessage.match(/Requires (\w+) access to "?([^",]+?)"?(?:,|$)/);
  const end = '(its permission set is fixed in the binary; README, "Permissions").';
  if (!m) return `lychd is not allowed to do this: ${denoMessage} ${end}`;
  const [, kind, target] = m;
  switch (kind) {
    case "read":
    case "write": {
      // The folders where an operator's own files can be (read also covers a few host paths
      // doctor looks at, which are no place for them).
      return `lychd may not ${kind} ${target}: it reads and writes files only under ` +
        `${granted.write.join(", ")}. Use a path under your home folder or /tmp ${end}`;
    }
    case "run":
      return `lychd may not run ${target}: it runs only ${granted.run.join(", ")} ${end}`;
    case "net":
      return `lychd may not connect to ${target}: it connects only to ${
        granted.net.join(", ")
      } ${end}`;
    case "env":
      return `lychd may not read the environment variable ${target} ${end}`;
    default:
      return `lychd may not use ${kind} (${target}) ${end}`;
  }
}
