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
