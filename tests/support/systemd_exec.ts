/**
 * How systemd reads an ExecStart= line into argv (systemd.service(5), "Command lines"):
 * words split on blanks, double and single quotes group, C-style backslash escapes, then
 * `%%` -> `%` and `$$` -> `$`. Written independently of lib/unit_syntax.ts so that tests
 * can check the quoting against the rules, not against itself. A specifier such as `%t` (which
 * Quadlet itself uses) becomes the marker `<%t>`, so it can never pass for a literal `%t` that
 * lychd forgot to escape; a `$VAR` expansion throws.
 */
export function execStartArgv(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === " " || line[i] === "\t") i++;
    if (i >= line.length) break;
    let word = "";
    let quote: string | null = null;
    for (; i < line.length; i++) {
      const c = line[i];
      if (quote) {
        if (c === quote) {
          quote = null;
          continue;
        }
      } else if (c === " " || c === "\t") break;
      else if (c === '"' || c === "'") {
        quote = c;
        continue;
      }
      if (c === "\\") {
        const n = line[++i];
        const simple: Record<string, string> = {
          n: "\n",
          t: "\t",
          "\\": "\\",
          '"': '"',
          "'": "'",
          " ": " ",
        };
        if (!(n in simple)) throw new Error(`unexpected escape \\${n} in ${line}`);
        word += simple[n];
        continue;
      }
      word += c;
    }
    if (quote) throw new Error(`unterminated quote in ${line}`);
    words.push(expand(word));
  }
  return words;
}

function expand(word: string): string {
  let out = "";
  for (let i = 0; i < word.length; i++) {
    const c = word[i];
    if (c === "%" && word[i + 1] !== "%") {
      out += `<%${word[++i]}>`;
      continue;
    }
    if (c === "$" && word[i + 1] !== "$") throw new Error(`unescaped $ in ${JSON.stringify(word)}`);
    if (c === "%" || c === "$") i++;
    out += c;
  }
  return out;
}
