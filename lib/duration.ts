/** "90", 90, "90s", "15m", "1h30m" -> seconds; null if not a duration. */
export function parseDuration(raw: unknown): number | null {
  if (typeof raw === "number") return Number.isInteger(raw) && raw >= 0 ? raw : null;
  if (typeof raw !== "string") return null;
  if (/^[0-9]+$/.test(raw)) return Number(raw);
  const m = raw.match(/^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$/);
  if (!m || raw === "") return null;
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
}
