/** Text from outside (an engine's journal) made safe to show on a terminal. */

// deno-lint-ignore no-control-regex
const ESCAPE_SEQUENCE = /\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])/g;
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/**
 * One line as it may be printed: terminal escape sequences (colours, cursor moves, titles) and
 * every other control character removed, tabs kept. An engine's log must not be able to move
 * the cursor, clear the screen or rewrite what lychd printed.
 */
export function printable(line: string): string {
  return line.replace(ESCAPE_SEQUENCE, "").replace(CONTROL, "");
}

/** Journal text for a report: printable lines, the blank ones dropped. */
export function printableLines(text: string): string[] {
  return text.split(/\r?\n/).map(printable).filter((l) => l.trim() !== "");
}
