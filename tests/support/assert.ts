/** node:assert/strict under the names these tests use (jsr:@std/assert is unreachable here). */
export {
  deepStrictEqual as assertDeep,
  match as assertMatch,
  ok as assert,
  rejects as assertRejects,
  strictEqual as assertEquals,
  throws as assertThrows,
} from "node:assert/strict";
