/**
 * Text from unit data: Nunjucks (Jinja2 syntax) over templates embedded by text import, so
 * `deno run`, `deno test` and the compiled binary read the same bytes and need no permission.
 * Nunjucks costs ~130 ms to load: it is imported here only, and only commands that render
 * import this module (dynamically, from plan.ts's callers).
 */
// @ts-types="npm:@types/nunjucks@3.2.6"
import nunjucks from "nunjucks";
import soulstone from "../../templates/soulstone.j2" with { type: "text" };
import harvester from "../../templates/harvester.j2" with { type: "text" };
import scribe from "../../templates/scribe.j2" with { type: "text" };
import gate from "../../templates/lychd-gate.service.j2" with { type: "text" };
import prometheusYml from "../../templates/prometheus.yml.j2" with { type: "text" };
import grafanaDatasource from "../../templates/grafana-datasource.yaml.j2" with { type: "text" };
import grafanaDashboards from "../../templates/grafana-dashboards.yaml.j2" with { type: "text" };
import { systemdWord, systemdWords } from "../unit_syntax.ts";

export const TEMPLATES: Record<string, string> = {
  "soulstone.j2": soulstone,
  "harvester.j2": harvester,
  "scribe.j2": scribe,
  "lychd-gate.service.j2": gate,
  "prometheus.yml.j2": prometheusYml,
  "grafana-datasource.yaml.j2": grafanaDatasource,
  "grafana-dashboards.yaml.j2": grafanaDashboards,
};

class EmbeddedLoader extends nunjucks.Loader {
  getSource(name: string) {
    const src = TEMPLATES[name];
    if (src === undefined) throw new Error(`no embedded template ${name}`);
    return { src, path: name, noCache: false };
  }
}

let env: nunjucks.Environment | null = null;

function environment(): nunjucks.Environment {
  if (env) return env;
  // autoescape off: unit files are not HTML. Undefined variables are errors, not "".
  env = new nunjucks.Environment(new EmbeddedLoader(), {
    autoescape: false,
    throwOnUndefined: true,
  });
  env.addFilter("word", systemdWord);
  env.addFilter("words", systemdWords);
  return env;
}

/** Render one embedded template; the result always ends with exactly one newline. */
export function renderTemplate(name: string, context: Record<string, unknown>): string {
  return environment().render(name, context).trimEnd() + "\n";
}
