/** A unified diff of two texts, for `init --dry-run`. Small and dependency-free. */

export function unifiedDiff(before: string, after: string, label: string, context = 3): string {
  const a = splitLines(before);
  const b = splitLines(after);
  // Common prefix and suffix are cheap to skip; the LCS runs on what is left.
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) [endA--, endB--];
  const ops: { op: " " | "-" | "+"; line: string }[] = [];
  for (let i = 0; i < start; i++) ops.push({ op: " ", line: a[i] });
  ops.push(...lcsOps(a.slice(start, endA), b.slice(start, endB)));
  for (let i = endA; i < a.length; i++) ops.push({ op: " ", line: a[i] });

  const out = [`--- ${label}`, `+++ ${label}`];
  let i = 0;
  while (i < ops.length) {
    if (ops[i].op === " ") {
      i++;
      continue;
    }
    // A hunk: from `context` lines before this change to `context` after the last one nearby.
    let from = Math.max(0, i - context);
    let to = i;
    while (to < ops.length) {
      if (ops[to].op !== " ") {
        to++;
        continue;
      }
      let run = 0;
      while (to + run < ops.length && ops[to + run].op === " ") run++;
      if (to + run >= ops.length || run > 2 * context) {
        to = Math.min(ops.length, to + context);
        break;
      }
      to += run;
    }
    let lineA = 1;
    let lineB = 1;
    for (let k = 0; k < from; k++) {
      if (ops[k].op !== "+") lineA++;
      if (ops[k].op !== "-") lineB++;
    }
    const hunk = ops.slice(from, to);
    const countA = hunk.filter((o) => o.op !== "+").length;
    const countB = hunk.filter((o) => o.op !== "-").length;
    out.push(
      `@@ -${countA ? lineA : lineA - 1},${countA} +${countB ? lineB : lineB - 1},${countB} @@`,
    );
    for (const o of hunk) out.push(o.op + o.line);
    from = to;
    i = to;
  }
  return out.join("\n") + "\n";
}

function splitLines(text: string): string[] {
  if (text === "") return [];
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function lcsOps(a: string[], b: string[]): { op: " " | "-" | "+"; line: string }[] {
  const n = a.length;
  const m = b.length;
  const table = new Uint32Array((n + 1) * (m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i * (m + 1) + j] = a[i] === b[j]
        ? table[(i + 1) * (m + 1) + j + 1] + 1
        : Math.max(table[(i + 1) * (m + 1) + j], table[i * (m + 1) + j + 1]);
    }
  }
  const ops: { op: " " | "-" | "+"; line: string }[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      ops.push({ op: " ", line: a[i] });
      i++, j++;
    } else if (i < n && (j >= m || table[(i + 1) * (m + 1) + j] >= table[i * (m + 1) + j + 1])) {
      ops.push({ op: "-", line: a[i++] });
    } else {
      ops.push({ op: "+", line: b[j++] });
    }
  }
  return ops;
}
