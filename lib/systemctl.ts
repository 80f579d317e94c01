/**
 * The systemd calls lychd makes, as argument lists (never a shell string), in one place.
 * `scope` is [] for system units or ["--user"].
 */
import { LychdError } from "./errors.ts";
import { EXIT } from "./exit.ts";
import { printable, printableLines } from "./text.ts";
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
  if (r.code !== 0) throw systemctlError(r.code, r.stderr, `show ${units.join(" ")}`, scope);
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
  if (r.code !== 0) throw systemctlError(r.code, r.stderr, args.join(" "), scope);
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
  if (r.code !== 0) return `(journalctl failed: ${printable(r.stderr.trim()) || `exit ${r.code}`})`;
  // llama.cpp ends its messages with a newline of its own: no blank line after each one.
  const shown = printableLines(r.stdout);
  return shown.length ? shown.join("\n") + "\n" : "";
}

/** systemd's `--timestamp=us+utc` form ("Thu 2026-11-26 08:43:21.123456 UTC") -> ms, or null. */
export function parseTimestamp(value: string | undefined): number | null {
  const m = value?.match(/(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? UTC$/);
  if (!m) return null;
  return Date.parse(`${m[1]}T${m[2]}Z`) + Number(m[3] ?? 0) * 1000;
}

/**
 * systemctl failed: a message for the user, with systemctl's own words. `unreachable`: there is
 * no systemd to talk to (exit NO_SYSTEMD), as opposed to systemd refusing one request (FAILED).
 */
export class SystemctlError extends LychdError {
  constructor(message: string, readonly code: number, readonly unreachable: boolean) {
    super(message, unreachable ? EXIT.NO_SYSTEMD : EXIT.FAILED);
    this.name = "SystemctlError";
  }
}

/** What systemctl says when there is no manager to reach (rather than a refused request). */
const UNREACHABLE =
  /Failed to connect to bus|Failed to get D-Bus connection|System has not been booted with systemd|No medium found|\$DBUS_SESSION_BUS_ADDRESS|XDG_RUNTIME_DIR/i;

/** Whether a failed systemctl run means there is no manager to talk to. */
export function unreachable(code: number, stderr: string): boolean {
  return code === 127 || code === 126 || UNREACHABLE.test(stderr);
}

function systemctlError(code: number, stderr: string, what: string, scope: string[]) {
  const said = printable(stderr.trim());
  if (unreachable(code, said)) {
    const user = scope.includes("--user");
    const why = code === 127 ? "systemctl is not installed" : said || `exit ${code}`;
    return new SystemctlError(
      `cannot reach ${user ? "your user's systemd (systemctl --user)" : "systemd"}: ${why}.` +
        (user
          ? " As root, use --system for system units; as a user, log in through a session " +
            "(which sets XDG_RUNTIME_DIR) or enable linger: loginctl enable-linger $USER."
          : ""),
      code,
      true,
    );
  }
  return new SystemctlError(`systemctl ${what} failed: ${said || `exit ${code}`}`, code, false);
}
