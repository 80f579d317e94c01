import { unifiedDiff } from "../lib/diff.ts";
import { assertEquals } from "./support/assert.ts";

Deno.test("diff: a one-line change with context", () => {
  const a = "1\n2\n3\n4\n5\n6\n7\n8\n";
  const b = "1\n2\n3\n4\nfive\n6\n7\n8\n";
  assertEquals(
    unifiedDiff(a, b, "f"),
    "--- f\n+++ f\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n",
  );
});

Deno.test("diff: creation and two distant hunks", () => {
  assertEquals(unifiedDiff("", "a\nb\n", "f"), "--- f\n+++ f\n@@ -0,0 +1,2 @@\n+a\n+b\n");
  const a = Array.from({ length: 20 }, (_, i) => `l${i}`).join("\n") + "\n";
  const b = a.replace("l1\n", "L1\n").replace("l18\n", "");
  assertEquals(
    unifiedDiff(a, b, "f"),
    "--- f\n+++ f\n@@ -1,5 +1,5 @@\n l0\n-l1\n+L1\n l2\n l3\n l4\n" +
      "@@ -16,5 +16,4 @@\n l15\n l16\n l17\n-l18\n l19\n",
  );
});
