/**
 * The systemd calls lychd makes, as argument lists (never a shell string), in one place.
 * `scope` is [] for system units or ["--user"].
 */
import { LychdError } from "./errors.ts";
import type { Host } from "./host.ts";

export type UnitProps = Record<string, string>;

/** `systemctl show -p ... UNIT...` -> one property map per unit, in the order asked. */
export async function showUnits(
  host: Host,
  scope: string[],
  units: string[],
  props: string[],
): Promise<Record<string, UnitProps>> {
  const r = await host.run("systemctl", [
    ...scope,
    "show",
    "--timestamp=us+utc",
    "-p",
    ["Id", ...props].join(","),
    ...units,
  ]);
  if (r.code !== 0) throw systemctlError(r.code, r.stderr, `show ${units.join(" ")}`);
  const out: Record<string, UnitProps> = {};
  let i = 0;
  for (const block of r.stdout.split(/\n\n+/)) {
    if (!block.trim()) continue;
    const props: UnitProps = {};
    for (const line of block.split("\n")) {
      const eq = line.indexOf("=");
      if (eq > 0) props[line.slice(0, eq)] = line.slice(eq + 1);
    }
    out[props.Id ?? units[i]] = props;
    i++;
  }
  return out;
}

export async function systemctl(host: Host, scope: string[], ...args: string[]): Promise<void> {
  const r = await host.run("systemctl", [...scope, ...args]);
  if (r.code !== 0) throw systemctlError(r.code, r.stderr, args.join(" "));
}

/** The last `lines` lines of a unit's journal, for failure reports. */
export async function journalTail(
  host: Host,
  scope: string[],
  unit: string,
  lines: number,
): Promise<string> {
  const r = await host.run("journalctl", [
    ...scope,
    "-u",
    unit,
    "-n",
    String(lines),
    "--no-pager",
    "-o",
    "cat",
  ]);
  return r.code === 0 ? r.stdout : `(journalctl failed: ${r.stderr.trim() || `exit ${r.code}`})`;
}

/** systemd's `--timestamp=us+utc` form ("Thu 2026-11-26 08:43:21.123456 UTC") -> ms, or null. */
export function parseTimestamp(value: string | undefined): number | null {
  const m = value?.match(/(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? UTC$/);
  if (!m) return null;
  return Date.parse(`${m[1]}T${m[2]}Z`) + Number(m[3] ?? 0) * 1000;
}

/** systemctl failed: a message for the user (exit 1), with systemctl's own words. */
export class SystemctlError extends LychdError {
  constructor(message: string, readonly code: number) {
    super(message, 1);
    this.name = "SystemctlError";
  }
}

function systemctlError(code: number, stderr: string, what: string): SystemctlError {
  const why = code === 127 ? "systemctl not found" : stderr.trim() || `exit ${code}`;
  return new SystemctlError(`systemctl ${what} failed: ${why}`, code);
}
