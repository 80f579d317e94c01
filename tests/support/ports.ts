/**
 * A loopback port nothing listens on (it was free a moment ago): connections to it are refused,
 * and a server started next can bind it.
 */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
