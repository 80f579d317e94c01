/**
 * lychd.yaml as text: parsing with positions for error messages, and updating the file with
 * flag values while keeping the user's comments and layout (yaml's Document API).
 */
import { isMap, LineCounter, parseDocument, stringify } from "yaml";
import { ConfigError } from "../errors.ts";

export type KeyPath = (string | number)[];

export interface ParsedConfig {
  data: unknown;
  /** "file:line:col" of the value at `path` (of its key if `atKey`), or of its closest parent. */
  locate(path: KeyPath, atKey?: boolean): string;
}

const PARSE_OPTIONS = { uniqueKeys: true, prettyErrors: true, strict: true } as const;

export function parseConfigText(text: string, file: string): ParsedConfig {
  if (text.includes("\0")) {
    throw new ConfigError([{ where: file, key: "(file)", message: "contains a NUL byte" }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { ...PARSE_OPTIONS, lineCounter: lines });
  const position = (offset: number) => {
    const { line, col } = lines.linePos(offset);
    return `${file}:${line}:${col}`;
  };
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => ({
      where: position(e.pos[0]),
      key: "(yaml)",
      message: e.message.split("\n")[0],
    })));
  }
  let data: unknown;
  try {
    // Alias bombs: yaml refuses documents whose aliases expand beyond maxAliasCount.
    data = doc.toJS({ maxAliasCount: 50 });
  } catch (e) {
    throw new ConfigError([{ where: file, key: "(yaml)", message: (e as Error).message }]);
  }
  const keyPosition = (path: KeyPath): string | null => {
    const parent = path.length > 1 ? doc.getIn(path.slice(0, -1), true) : doc.contents;
    if (!isMap(parent)) return null;
    const pair = parent.items.find((p) => (p.key as { value?: unknown })?.value === path.at(-1));
    const range = (pair?.key as { range?: [number, number, number] })?.range;
    return range ? position(range[0]) : null;
  };
  const locate = (path: KeyPath, atKey = false): string => {
    if (atKey && path.length > 0) {
      const at = keyPosition(path);
      if (at) return at;
    }
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] };
      if (node && typeof node === "object" && node.range) return position(node.range[0]);
      // A key with a null value has no node: point at the key itself.
      const at = n > 0 ? keyPosition(path.slice(0, n)) : null;
      if (at) return at;
    }
    return file;
  };
  return { data: data ?? {}, locate };
}

export interface Override {
  path: KeyPath;
  value: unknown;
  /** The flag that set it, for error messages, e.g. "--model vllm=...". */
  flag: string;
}

/**
 * The config text after applying `overrides`: the existing document with only those keys
 * changed (comments kept), or a fresh document when there is none yet.
 */
export function updateConfigText(existing: string | null, overrides: Override[]): string {
  const doc = existing === null ? parseDocument("{}") : parseDocument(existing, PARSE_OPTIONS);
  // The last override of a key wins (`--model vllm=a --model vllm=b` is b), as in resolveConfig.
  const last = [...new Map(overrides.map((o) => [JSON.stringify(o.path), o])).values()];
  // A flag that repeats what the file says changes nothing: the file stays byte for byte.
  const changing = last.filter((o) => {
    const current = doc.getIn(o.path);
    const plain = current && typeof current === "object" && "toJSON" in current
      ? (current as { toJSON(): unknown }).toJSON()
      : current;
    return JSON.stringify(plain) !== JSON.stringify(o.value);
  });
  if (existing !== null && changing.length === 0) return existing;
  for (const o of changing) {
    doc.setIn(o.path, doc.createNode(o.value, { flow: Array.isArray(o.value) }));
  }
  const body = existing === null ? stringify(doc.toJS(), { lineWidth: 0 }) : doc.toString();
  return existing === null ? CONFIG_HEADER + body : body;
}

const CONFIG_HEADER =
  `# lychd configuration, written by the first \`lychd init\`; later runs read it and
# command-line flags override it. Reference: README.md, section "Configuration".
`;
