// Streaming reader and validator for NAR (Nix ARchive, "nix-archive-1"), and the `.ls` listing of a NAR.
//
// PROTOCOL.md:
//   str(s) = u64 little-endian length, the bytes, zero padding to a multiple of 8
//   nar    = str("nix-archive-1") node
//   node   = "(" "type" (regular | symlink | directory) ")"
//   regular   = ["executable" ""] "contents" str(data)
//   symlink   = "target" str(t)
//   directory = { "entry" "(" "name" str(n) "node" node ")" }
// (every quoted word is itself a str). Rejected: unknown tags, non-zero padding, names that are empty, ".", "..",
// or contain "/" or NUL, directory entries not strictly increasing by bytes, trailing data after the root node.
// Example: a 12-byte file makes a 128-byte NAR whose contents start at narOffset 96.
//
// Listing (`<hash32>.ls`): {"version":1,"root":NODE}, NODE = {"type":"regular","size":N,"executable":true?,
// "narOffset":N} | {"type":"directory","entries":{NAME:NODE,...}} | {"type":"symlink","target":T}; keys in
// that order and entries sorted by name, as Nix 2.8 writes it.
//
// The reader is a state machine fed arbitrary chunks. Memory is constant apart from the listing itself: file
// contents are hashed (node:crypto sha256 over each whole chunk, in C) and skipped by arithmetic; only the
// small string being parsed is buffered (tags <= 13 bytes, names <= 255, symlink targets <= 4095, as on Linux).
// It accepts exactly the canonical grammar that `nix-store --dump` writes; Nix's own parser is looser about
// field order, but no Nix ever writes another order and a verifying cache has no reason to accept one.

import { createHash, type Hash } from "node:crypto";
import { NixFormatError } from "./errors.ts";
import { formatHash } from "./hash.ts";

export interface NarListingRegular {
  type: "regular";
  size: number;
  executable?: true;
  /** offset of the first content byte in the NAR */
  narOffset: number;
}
export interface NarListingDirectory {
  type: "directory";
  entries: Record<string, NarListingNode>;
}
export interface NarListingSymlink {
  type: "symlink";
  target: string;
}
export type NarListingNode = NarListingRegular | NarListingDirectory | NarListingSymlink;

export interface NarSummary {
  /** `sha256:<nix32>` */
  narHash: string;
  narSize: number;
  listing: NarListingNode;
}

export const NAR_MAGIC = "nix-archive-1";
export const MAX_NAR_NAME_LENGTH = 255;
export const MAX_NAR_TARGET_LENGTH = 4095;
const MAX_TAG_LENGTH = NAR_MAGIC.length;
const TOKEN_BUFFER_SIZE = MAX_NAR_TARGET_LENGTH;

// What the next str is expected to be.
enum Expect {
  Magic,
  Open,
  TypeTag,
  TypeValue,
  RegularField, // "executable" or "contents"
  ExecutableValue, // ""
  ContentsTag,
  Contents,
  NodeClose,
  TargetTag,
  TargetValue,
  DirectoryField, // "entry" or ")"
  EntryOpen,
  NameTag,
  NameValue,
  NodeTag,
  EntryClose,
  End,
}

const EXPECTED_WHAT: Record<Expect, string> = {
  [Expect.Magic]: `"${NAR_MAGIC}"`,
  [Expect.Open]: '"("',
  [Expect.TypeTag]: '"type"',
  [Expect.TypeValue]: '"regular", "symlink" or "directory"',
  [Expect.RegularField]: '"executable" or "contents"',
  [Expect.ExecutableValue]: 'the empty string after "executable"',
  [Expect.ContentsTag]: '"contents"',
  [Expect.Contents]: "file contents",
  [Expect.NodeClose]: '")"',
  [Expect.TargetTag]: '"target"',
  [Expect.TargetValue]: "a symlink target",
  [Expect.DirectoryField]: '"entry" or ")"',
  [Expect.EntryOpen]: '"("',
  [Expect.NameTag]: '"name"',
  [Expect.NameValue]: "an entry name",
  [Expect.NodeTag]: '"node"',
  [Expect.EntryClose]: '")"',
  [Expect.End]: "the end of the NAR",
};

// Where a byte of input goes: the 8-byte length of a str, its data, or its padding.
enum Phase {
  Length,
  Data,
  Padding,
}

interface DirectoryFrame {
  node: NarListingDirectory;
  /** the last entry name, for the order check; previousLength -1 before the first entry */
  readonly previousName: Uint8Array;
  previousLength: number;
  pendingName: string;
}

const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const T_MAGIC = ascii(NAR_MAGIC);
const T_OPEN = ascii("(");
const T_CLOSE = ascii(")");
const T_TYPE = ascii("type");
const T_REGULAR = ascii("regular");
const T_SYMLINK = ascii("symlink");
const T_DIRECTORY = ascii("directory");
const T_EXECUTABLE = ascii("executable");
const T_CONTENTS = ascii("contents");
const T_TARGET = ascii("target");
const T_ENTRY = ascii("entry");
const T_NAME = ascii("name");
const T_NODE = ascii("node");

const utf8 = new TextDecoder("utf-8");

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

function setEntry(entries: Record<string, NarListingNode>, name: string, node: NarListingNode): void {
  if (name === "__proto__") {
    Object.defineProperty(entries, name, {
      value: node,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  } else {
    entries[name] = node;
  }
}

export class NarReader {
  readonly #hash: Hash = createHash("sha256");
  /** absolute offset of the first byte of the next chunk */
  #position = 0;
  #phase = Phase.Length;
  #expect = Expect.Magic;
  // the str being read
  readonly #lengthBytes = new Uint8Array(8);
  #lengthHave = 0;
  #strStart = 0;
  #strLength = 0;
  #dataLeft = 0;
  #paddingLeft = 0;
  #streaming = false;
  readonly #token = new Uint8Array(TOKEN_BUFFER_SIZE);
  #tokenLength = 0;
  // the tree being built
  #root: NarListingNode | undefined;
  #regular: NarListingRegular | undefined;
  #symlink: NarListingSymlink | undefined;
  readonly #stack: DirectoryFrame[] = [];
  #failure: NixFormatError | undefined;
  #finished = false;

  /** Feed the next bytes of the NAR. Throws NixFormatError (with the byte offset) at the first malformed byte. */
  update(chunk: Uint8Array): void {
    this.#checkUsable();
    try {
      this.#consume(chunk);
    } catch (e) {
      if (e instanceof NixFormatError) this.#failure = e;
      throw e;
    }
  }

  /** End of input: returns hash, size and listing, or throws NixFormatError if the NAR is incomplete. */
  finish(): NarSummary {
    this.#checkUsable();
    if (this.#expect !== Expect.End) {
      const inside =
        this.#phase === Phase.Length && this.#lengthHave === 0
          ? `while expecting ${EXPECTED_WHAT[this.#expect]}`
          : `inside ${EXPECTED_WHAT[this.#expect]} that starts at byte ${this.#strStart}`;
      this.#failure = new NixFormatError(`truncated NAR: input ends at byte ${this.#position} ${inside}`);
      throw this.#failure;
    }
    this.#finished = true;
    return {
      narHash: formatHash(new Uint8Array(this.#hash.digest())),
      narSize: this.#position,
      listing: this.#root!,
    };
  }

  #checkUsable(): void {
    if (this.#failure) throw this.#failure;
    if (this.#finished) throw new Error("NarReader: finish() was already called");
  }

  #fail(offset: number, message: string): never {
    throw new NixFormatError(`invalid NAR at byte ${offset}: ${message}`);
  }

  #consume(chunk: Uint8Array): void {
    const n = chunk.length;
    if (n === 0) return;
    this.#hash.update(chunk);
    const base = this.#position;
    let i = 0;
    try {
      while (i < n) {
        if (this.#phase === Phase.Length) {
          if (this.#expect === Expect.End) {
            this.#fail(base + i, "trailing data after the end of the root node");
          }
          let lo: number;
          let hi: number;
          if (this.#lengthHave === 0 && n - i >= 8) {
            this.#strStart = base + i;
            lo = (chunk[i]! | (chunk[i + 1]! << 8) | (chunk[i + 2]! << 16) | (chunk[i + 3]! << 24)) >>> 0;
            hi = (chunk[i + 4]! | (chunk[i + 5]! << 8) | (chunk[i + 6]! << 16) | (chunk[i + 7]! << 24)) >>> 0;
            i += 8;
          } else {
            if (this.#lengthHave === 0) this.#strStart = base + i;
            const take = Math.min(8 - this.#lengthHave, n - i);
            for (let k = 0; k < take; k++) this.#lengthBytes[this.#lengthHave + k] = chunk[i + k]!;
            this.#lengthHave += take;
            i += take;
            if (this.#lengthHave < 8) break;
            this.#lengthHave = 0;
            const b = this.#lengthBytes;
            lo = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
            hi = (b[4]! | (b[5]! << 8) | (b[6]! << 16) | (b[7]! << 24)) >>> 0;
          }
          this.#startString(lo, hi);
          if (this.#dataLeft === 0) {
            this.#phase = Phase.Padding;
            if (this.#paddingLeft === 0) this.#endString();
          } else {
            this.#phase = Phase.Data;
          }
        } else if (this.#phase === Phase.Data) {
          const take = Math.min(this.#dataLeft, n - i);
          if (!this.#streaming) {
            // a byte loop: tokens are short, and subarray() on a Buffer costs more than copying them
            const token = this.#token;
            let t = this.#tokenLength;
            for (let k = i, end = i + take; k < end; k++) token[t++] = chunk[k]!;
            this.#tokenLength = t;
          }
          i += take;
          this.#dataLeft -= take;
          if (this.#dataLeft === 0) {
            this.#phase = Phase.Padding;
            if (this.#paddingLeft === 0) this.#endString();
          }
        } else {
          const take = Math.min(this.#paddingLeft, n - i);
          for (let k = 0; k < take; k++) {
            if (chunk[i + k] !== 0) this.#fail(base + i + k, "non-zero padding byte");
          }
          i += take;
          this.#paddingLeft -= take;
          if (this.#paddingLeft === 0) this.#endString();
        }
      }
    } finally {
      this.#position = base + i;
    }
  }

  // A str's length has been read: check it against what may come here, before any of its bytes.
  #startString(lo: number, hi: number): void {
    const at = this.#strStart;
    const expect = this.#expect;
    if (expect === Expect.Magic && (hi !== 0 || lo !== T_MAGIC.length)) {
      this.#fail(at, "bad magic: not a NAR (nix-archive-1)");
    }
    // lengths beyond 2^53 - 1 cannot be counted exactly in a JS number (nor stored anywhere)
    if (hi > 0x1fffff) this.#fail(at, `string length ${BigInt(hi) * 2n ** 32n + BigInt(lo)} is too large`);
    const length = hi * 0x100000000 + lo;
    this.#strLength = length;
    this.#dataLeft = length;
    this.#paddingLeft = (8 - (length % 8)) % 8;
    this.#tokenLength = 0;
    this.#streaming = false;
    switch (expect) {
      case Expect.Contents: {
        const node = this.#regular!;
        node.size = length;
        node.narOffset = at + 8;
        this.#streaming = true;
        return;
      }
      case Expect.NameValue:
        if (length === 0) this.#fail(at, "empty entry name");
        if (length > MAX_NAR_NAME_LENGTH) {
          this.#fail(at, `entry name of ${length} bytes (at most ${MAX_NAR_NAME_LENGTH} allowed)`);
        }
        return;
      case Expect.TargetValue:
        if (length > MAX_NAR_TARGET_LENGTH) {
          this.#fail(at, `symlink target of ${length} bytes (at most ${MAX_NAR_TARGET_LENGTH} allowed)`);
        }
        return;
      case Expect.ExecutableValue:
        if (length !== 0) this.#fail(at, `"executable" is followed by a ${length}-byte string, not ""`);
        return;
      case Expect.Magic: // length checked above
        return;
      default:
        if (length > MAX_TAG_LENGTH) {
          this.#fail(at, `expected ${EXPECTED_WHAT[expect]}, found a ${length}-byte string`);
        }
    }
  }

  #tokenIs(tag: Uint8Array): boolean {
    if (this.#tokenLength !== tag.length) return false;
    const t = this.#token;
    for (let k = 0; k < tag.length; k++) if (t[k] !== tag[k]) return false;
    return true;
  }

  #unexpected(): never {
    const shown =
      this.#tokenLength <= MAX_TAG_LENGTH ? this.#token.subarray(0, this.#tokenLength) : undefined;
    const found = shown ? JSON.stringify(utf8.decode(shown)) : `a ${this.#strLength}-byte string`;
    const what = this.#expect === Expect.TypeValue ? "unknown file type" : "unknown or misplaced tag";
    this.#fail(this.#strStart, `${what} ${found} where ${EXPECTED_WHAT[this.#expect]} was expected`);
  }

  #attach(node: NarListingNode): void {
    const frame = this.#stack[this.#stack.length - 1];
    if (frame) setEntry(frame.node.entries, frame.pendingName, node);
    else this.#root = node;
  }

  #closeNode(): void {
    this.#regular = undefined;
    this.#symlink = undefined;
    this.#expect = this.#stack.length === 0 ? Expect.End : Expect.EntryClose;
  }

  // A whole str (length, data, padding) has been read.
  #endString(): void {
    this.#phase = Phase.Length;
    switch (this.#expect) {
      case Expect.Magic:
        if (!this.#tokenIs(T_MAGIC)) this.#fail(this.#strStart, "bad magic: not a NAR (nix-archive-1)");
        this.#expect = Expect.Open;
        return;
      case Expect.Open:
      case Expect.EntryOpen:
        if (!this.#tokenIs(T_OPEN)) this.#unexpected();
        this.#expect = this.#expect === Expect.Open ? Expect.TypeTag : Expect.NameTag;
        return;
      case Expect.TypeTag:
        if (!this.#tokenIs(T_TYPE)) this.#unexpected();
        this.#expect = Expect.TypeValue;
        return;
      case Expect.TypeValue:
        if (this.#tokenIs(T_REGULAR)) {
          const node: NarListingRegular = { type: "regular", size: 0, narOffset: 0 };
          this.#attach(node);
          this.#regular = node;
          this.#expect = Expect.RegularField;
        } else if (this.#tokenIs(T_SYMLINK)) {
          const node: NarListingSymlink = { type: "symlink", target: "" };
          this.#attach(node);
          this.#symlink = node;
          this.#expect = Expect.TargetTag;
        } else if (this.#tokenIs(T_DIRECTORY)) {
          const node: NarListingDirectory = { type: "directory", entries: {} };
          this.#attach(node);
          this.#stack.push({
            node,
            previousName: new Uint8Array(MAX_NAR_NAME_LENGTH),
            previousLength: -1,
            pendingName: "",
          });
          this.#expect = Expect.DirectoryField;
        } else {
          this.#unexpected();
        }
        return;
      case Expect.RegularField:
        if (this.#tokenIs(T_EXECUTABLE)) {
          this.#regular!.executable = true;
          this.#expect = Expect.ExecutableValue;
        } else if (this.#tokenIs(T_CONTENTS)) {
          this.#expect = Expect.Contents;
        } else {
          this.#unexpected();
        }
        return;
      case Expect.ExecutableValue:
        this.#expect = Expect.ContentsTag; // its length was checked to be 0
        return;
      case Expect.ContentsTag:
        if (!this.#tokenIs(T_CONTENTS)) this.#unexpected();
        this.#expect = Expect.Contents;
        return;
      case Expect.Contents:
        this.#expect = Expect.NodeClose;
        return;
      case Expect.NodeClose:
        if (!this.#tokenIs(T_CLOSE)) this.#unexpected();
        this.#closeNode();
        return;
      case Expect.TargetTag:
        if (!this.#tokenIs(T_TARGET)) this.#unexpected();
        this.#expect = Expect.TargetValue;
        return;
      case Expect.TargetValue:
        this.#symlink!.target = utf8.decode(this.#token.subarray(0, this.#tokenLength));
        this.#expect = Expect.NodeClose;
        return;
      case Expect.DirectoryField:
        if (this.#tokenIs(T_ENTRY)) {
          this.#expect = Expect.EntryOpen;
        } else if (this.#tokenIs(T_CLOSE)) {
          this.#stack.pop();
          this.#closeNode();
        } else {
          this.#unexpected();
        }
        return;
      case Expect.NameTag:
        if (!this.#tokenIs(T_NAME)) this.#unexpected();
        this.#expect = Expect.NameValue;
        return;
      case Expect.NameValue:
        this.#acceptName();
        this.#expect = Expect.NodeTag;
        return;
      case Expect.NodeTag:
        if (!this.#tokenIs(T_NODE)) this.#unexpected();
        this.#expect = Expect.Open;
        return;
      case Expect.EntryClose:
        if (!this.#tokenIs(T_CLOSE)) this.#unexpected();
        this.#expect = Expect.DirectoryField;
        return;
      case Expect.End:
        return; // unreachable: no str is started once the root node is closed
    }
  }

  #acceptName(): void {
    const token = this.#token;
    const length = this.#tokenLength;
    const at = this.#strStart;
    let ascii = true;
    for (let k = 0; k < length; k++) {
      const c = token[k]!;
      if (c === 0x2f) this.#fail(at, `entry name ${this.#tokenJson()} contains "/"`);
      if (c === 0) this.#fail(at, `entry name ${this.#tokenJson()} contains a NUL byte`);
      if (c >= 0x80) ascii = false;
    }
    if (token[0] === 0x2e && (length === 1 || (length === 2 && token[1] === 0x2e))) {
      this.#fail(at, `entry name ${this.#tokenJson()}`);
    }
    const frame = this.#stack[this.#stack.length - 1]!;
    const previous = frame.previousName;
    if (frame.previousLength >= 0) {
      // strictly increasing by bytes
      const common = Math.min(length, frame.previousLength);
      let d = 0;
      for (let k = 0; k < common && d === 0; k++) d = token[k]! - previous[k]!;
      if (d < 0 || (d === 0 && length <= frame.previousLength)) {
        const before = JSON.stringify(utf8.decode(previous.subarray(0, frame.previousLength)));
        this.#fail(
          at,
          `directory entries out of order: ${this.#tokenJson()} after ${before} (must be strictly increasing)`,
        );
      }
    }
    for (let k = 0; k < length; k++) previous[k] = token[k]!;
    frame.previousLength = length;
    const bytes = token.subarray(0, length);
    frame.pendingName = ascii
      ? String.fromCharCode.apply(null, bytes as unknown as number[])
      : utf8.decode(bytes);
  }

  #tokenJson(): string {
    return JSON.stringify(utf8.decode(this.#token.subarray(0, this.#tokenLength)));
  }
}

/** Read a whole NAR held in memory (convenience for small NARs and tests). */
export function readNar(bytes: Uint8Array): NarSummary {
  const reader = new NarReader();
  reader.update(bytes);
  return reader.finish();
}

const encoder = new TextEncoder();
const SURROGATE_RE = /[\uD800-\uDFFF]/;

function compareUtf8(a: string, b: string): number {
  return compareBytes(encoder.encode(a), encoder.encode(b));
}

// Names in the order of their UTF-8 bytes (Nix's order). UTF-16 code-unit order (JS's default) agrees with it
// unless a name has a character outside the BMP, so the encoding is only paid for then.
function sortedNames(entries: Record<string, NarListingNode>): string[] {
  const names = Object.keys(entries);
  return names.some((n) => SURROGATE_RE.test(n)) ? names.sort(compareUtf8) : names.sort();
}

/**
 * The `.ls` document for a NAR: `{"version":1,"root":NODE}`, written as Nix 2.8 writes it (key order type, size,
 * executable, narOffset; entries sorted by the bytes of their names). Iterative, so any depth works.
 */
export function formatListing(root: NarListingNode): string {
  const parts: string[] = ['{"version":1,"root":'];
  // Work items: a node to write, or a literal to emit once its children are done.
  const stack: (NarListingNode | string)[] = ["}", root];
  while (stack.length > 0) {
    const item = stack.pop()!;
    if (typeof item === "string") {
      parts.push(item);
      continue;
    }
    switch (item.type) {
      case "regular":
        parts.push(
          `{"type":"regular","size":${item.size}${item.executable ? ',"executable":true' : ""},"narOffset":${item.narOffset}}`,
        );
        break;
      case "symlink":
        parts.push(`{"type":"symlink","target":${JSON.stringify(item.target)}}`);
        break;
      case "directory": {
        parts.push('{"type":"directory","entries":{');
        const names = sortedNames(item.entries);
        stack.push("}}");
        for (let k = names.length - 1; k >= 0; k--) {
          const name = names[k]!;
          stack.push(item.entries[name]!);
          stack.push(`${k > 0 ? "," : ""}${JSON.stringify(name)}:`);
        }
        break;
      }
    }
  }
  return parts.join("");
}
