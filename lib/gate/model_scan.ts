/**
 * On demand needs the `model` of a request before it can choose an engine, but a request body may
 * be large (an image, base64 in `messages`) and OpenAI's own client writes `messages` before
 * `model`. So the body is scanned as it arrives, byte by byte, to the end of its top-level object
 * (a second `model` key is an error: JSON.parse would take the last, the scan the first), for the
 * top-level `model` key only:
 * nested objects, arrays and strings are skipped without being parsed or kept apart from the
 * bytes themselves, which are forwarded unchanged. Every JSON delimiter is ASCII and no UTF-8
 * multi-byte sequence contains an ASCII byte, so bytes suffice.
 */

/** The outcome: the model named (null: the body names none), or why it cannot be known. */
export type ModelScan =
  | { model: string | null }
  | { error: string };

const QUOTE = 0x22, BACKSLASH = 0x5c, COLON = 0x3a, COMMA = 0x2c;
const OPEN_OBJECT = 0x7b, CLOSE_OBJECT = 0x7d, OPEN_ARRAY = 0x5b, CLOSE_ARRAY = 0x5d;

/** A key longer than this is not "model"; a model id longer than this is refused. */
const MAX_TOKEN = 4096;

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

/**
 * Feed it the body's chunks; it answers as soon as it knows (`model`'s value was read, or the
 * top-level object ended without one), or with an error for a body that is not a JSON object.
 */
export class ModelScanner {
  #depth = 0;
  #inString = false;
  #escaped = false;
  /** The bytes of the string being read at depth 1 (a key, or model's value). */
  #token: number[] | null = null;
  #tokenTooLong = false;
  /** At depth 1: expecting a key (true) or a value (false). */
  #expectKey = true;
  #lastKey: string | null = null;
  #started = false;
  /** The bytes of a UTF-8 byte order mark seen so far at the start (JSON.parse skips one). */
  #bom = 0;
  /** The first top-level "model"; a second one is an error (JSON.parse would take the last). */
  #model: string | undefined;
  #result: ModelScan | null = null;
  /** The top-level `stream` was `true` (the last one, as JSON.parse takes it). */
  #stream = false;

  result(): ModelScan | null {
    return this.#result;
  }

  /** Whether the body asks for a streamed answer (`"stream": true` at its top level). */
  streams(): boolean {
    return this.#stream;
  }

  feed(chunk: Uint8Array): ModelScan | null {
    for (let i = 0; i < chunk.length && this.#result === null; i++) this.#byte(chunk[i]);
    return this.#result;
  }

  /**
   * The body ended, or no more of it is read: what was found, or why nothing could be. A body
   * cut off after its model goes to that model's engine, which judges the rest.
   */
  end(): ModelScan {
    if (this.#result) return this.#result;
    this.#result = this.#model !== undefined
      ? { model: this.#model }
      : this.#started
      ? { error: "the JSON body ended before its top-level object closed" }
      : { error: "the body is empty" };
    return this.#result;
  }

  #byte(b: number): void {
    if (!this.#started) {
      if (isSpace(b)) return;
      if (b === [0xef, 0xbb, 0xbf][this.#bom] && this.#bom < 3) {
        this.#bom++;
        return;
      }
      if (b !== OPEN_OBJECT) {
        this.#result = { error: "the body is not a JSON object" };
        return;
      }
      this.#started = true;
      this.#depth = 1;
      return;
    }
    if (this.#inString) {
      if (this.#token !== null) {
        if (this.#token.length < MAX_TOKEN) this.#token.push(b);
        else this.#tokenTooLong = true;
      }
      if (this.#escaped) this.#escaped = false;
      else if (b === BACKSLASH) this.#escaped = true;
      else if (b === QUOTE) {
        this.#inString = false;
        if (this.#token !== null) this.#stringEnded();
      }
      return;
    }
    if (isSpace(b)) return;
    // A top-level `stream` whose value begins here: only `true` asks for a stream (as
    // JSON.parse reads it, the last one counts; a string, a number, null is not true).
    if (this.#depth === 1 && !this.#expectKey && this.#lastKey === "stream" && b !== COLON) {
      this.#stream = b === 0x74;
      this.#lastKey = null;
    }
    if (b === QUOTE) {
      this.#inString = true;
      // Only strings at the top level matter: keys, and model's value.
      this.#token = this.#depth === 1 ? [QUOTE] : null;
      this.#tokenTooLong = false;
      return;
    }
    if (this.#depth === 1) {
      if (b === COLON) {
        this.#expectKey = false;
        return;
      }
      if (b === COMMA) {
        this.#expectKey = true;
        this.#lastKey = null;
        return;
      }
      if (b === CLOSE_OBJECT) {
        this.#result = { model: this.#model ?? null };
        return;
      }
      if (!this.#expectKey && this.#lastKey === "model") {
        this.#result = { error: '"model" must be a string' };
        return;
      }
    }
    if (b === OPEN_OBJECT || b === OPEN_ARRAY) this.#depth++;
    else if (b === CLOSE_OBJECT || b === CLOSE_ARRAY) this.#depth--;
  }

  #stringEnded(): void {
    const raw = new TextDecoder().decode(new Uint8Array(this.#token!));
    this.#token = null;
    if (this.#tokenTooLong) {
      if (!this.#expectKey && this.#lastKey === "model") {
        this.#result = { error: `"model" is longer than ${MAX_TOKEN} bytes` };
      }
      this.#lastKey = this.#expectKey ? "" : this.#lastKey;
      return;
    }
    let text: string;
    try {
      text = JSON.parse(raw);
    } catch {
      this.#result = { error: "the JSON body has a malformed string at its top level" };
      return;
    }
    if (this.#expectKey) this.#lastKey = text;
    else if (this.#lastKey === "model") {
      if (this.#model !== undefined) {
        this.#result = { error: 'the body names "model" twice' };
      } else this.#model = text;
    }
  }
}

/**
 * Read `body` until its model is known, at most `limit` bytes. Returns what was found and a body
 * to forward in its place: the bytes read so far, then the rest as it comes.
 */
export async function scanModel(
  body: ReadableStream<Uint8Array>,
  limit: number,
  /** Asks for room for `n` more bytes in memory; false: there is none (the scan stops). */
  take: (n: number) => boolean = () => true,
): Promise<
  {
    scan: ModelScan | "no room";
    /** `"stream": true` in what was read. */
    stream: boolean;
    body: ReadableStream<Uint8Array>;
    read: number;
  }
> {
  const reader = body.getReader();
  const scanner = new ModelScanner();
  const seen: Uint8Array[] = [];
  let read = 0;
  let scan: ModelScan | "no room" | null = null;
  let ended = false;
  while (scan === null) {
    if (read >= limit) {
      // Read no further: the model found so far, if any, decides.
      const sofar = scanner.end();
      scan = "model" in sofar ? sofar : {
        error: `no top-level "model" in the first ${limit >> 20} MiB of the body`,
      };
      break;
    }
    const { value, done } = await reader.read();
    if (done) {
      ended = true;
      scan = scanner.end();
      break;
    }
    if (!take(value.length)) {
      seen.push(value);
      scan = "no room";
      break;
    }
    seen.push(value);
    read += value.length;
    scan = scanner.feed(value);
  }
  const rest = new ReadableStream<Uint8Array>({
    start(c) {
      for (const chunk of seen) c.enqueue(chunk);
      if (ended) c.close();
    },
    async pull(c) {
      if (ended) return;
      const { value, done } = await reader.read();
      if (done) c.close();
      else c.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return { scan, stream: scanner.streams(), body: rest, read };
}
