/** Reading the embedded dashboards: their panels and queries. */
import { DASHBOARDS } from "../../lib/dashboards.ts";

export interface Target {
  expr: string;
  datasource: { uid: string };
}
export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { uid: string };
  targets?: Target[];
}

export function panels(file: string): Panel[] {
  return (JSON.parse(DASHBOARDS[file]).panels as Panel[]).filter((p) => p.type !== "row");
}

/** Grafana's placeholders replaced the way Grafana would for a 5 s scrape interval. */
export function substitute(expr: string): string {
  return expr.replaceAll("$__rate_interval", "1m").replaceAll("$__interval", "15s")
    .replaceAll("$model", ".*");
}
