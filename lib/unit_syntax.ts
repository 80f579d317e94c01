/**
 * systemd's quoting rules for values that land in Quadlet files. Quadlet splits `Exec=` and
 * `Environment=` into words the way systemd does (quotes, backslash escapes) and writes them
 * into `ExecStart=`, where systemd then expands `%` specifiers and `$` variables. So a literal
 * `%` is written `%%`, a literal `$` is written `$$`, and a word with blanks or quotes is put in
 * double quotes with `\` and `"` escaped. Control characters never get here: the config
 * validation rejects them (a newline would start a new key).
 */

/** A character that would end a line, or worse, inside a unit file. */
// deno-lint-ignore no-control-regex
export const CONTROL_CHARACTER = /[\x00-\x1f\x7f]/;

/**
 * Host paths land in Volume=, where systemd expands `%` and Podman splits on `:` and `,`, with no
 * quoting to save them: only plain absolute paths, and never `..` (a mount must be what it says).
 */
export const HOST_PATH = /^\/[A-Za-z0-9._\/@+~-]*$/;

/** HOST_PATH with spaces: Quadlet quotes a Volume= value with blanks as one word (tested). */
const HOST_PATH_WITH_SPACES = /^\/[A-Za-z0-9._\/@+~ -]*$/;

/** Why `path` cannot go into a unit as a host path; null if it can. */
export function hostPathProblem(path: string, spaces = false): string | null {
  if (!(spaces ? HOST_PATH_WITH_SPACES : HOST_PATH).test(path)) {
    return `must be an absolute path of letters, digits${spaces ? ", spaces" : ""} and ._-/@+~ ` +
      `(no ${spaces ? "" : "blanks, "}%, $, : or ,)`;
  }
  if (path.split("/").some((part) => part === ".." || part === ".")) {
    return 'must not contain "." or ".." parts';
  }
  return null;
}

/** One word for `Exec=` or one `NAME=value` for `Environment=`. */
export function systemdWord(value: string): string {
  if (CONTROL_CHARACTER.test(value)) {
    throw new Error(`control character in a unit value: ${JSON.stringify(value)}`);
  }
  const literal = value.replaceAll("%", "%%").replaceAll("$", "$$$$");
  if (literal !== "" && /^[A-Za-z0-9_@%+=:,.\/$-]+$/.test(literal)) return literal;
  return `"${literal.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

/** Several words, separated by single spaces. */
export function systemdWords(values: readonly string[]): string {
  return values.map(systemdWord).join(" ");
}
