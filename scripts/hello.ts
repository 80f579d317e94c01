// The baseline for scripts/bench.ts: the cost of starting Deno at all.
console.log("hello");
