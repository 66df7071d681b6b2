// The NAR of a store path, serialised in this process from the file system: what `nix-store --dump` writes,
// byte for byte, without starting a Nix process per path (~25 ms of Nix start-up, plus a fork of the whole
// Node process, for every one of the hundreds of small paths of a typical closure).
//
// PROTOCOL.md, as Nix's dumpPath (src/libutil/archive.cc) writes it:
//   str(s) = u64 little-endian length, the bytes, zero padding to a multiple of 8
//   nar    = str("nix-archive-1") node
//   node   = "(" "type" (regular | symlink | directory) ")"
//   regular   = ["executable" ""] "contents" str(data)      executable when the owner may execute (S_IXUSR)
//   symlink   = "target" str(readlink)
//   directory = { "entry" "(" "name" str(n) "node" node ")" }   entries sorted by name, bytewise
// Anything else (a socket, a device) is an error, as in Nix. Names and targets are handled as bytes, never
// decoded. The server checks the result against the NarHash it is told, so a difference cannot go unnoticed.
//
// The serialiser is synchronous and writes into one scratch buffer that its caller owns: tokens, names and
// file contents all land there (contents straight from read(2), the only copy of each byte), and the scratch
// goes out as a view whenever it is full, and at the end. A push of a closure used to spend more CPU on what
// the asynchronous version cost than on the rest of the dump: a thread-pool round trip and promises for
// every lstat/open/read/close of thousands of small files, and a fresh buffer for every read and for every
// gathered chunk (~900 MB of ArrayBuffers per 530 MiB push, 40-odd full garbage collections). Reads of the
// store mostly hit the page cache; blocking the event loop for one scratch-full at a time is the cheaper
// trade for a process whose job is this dump.
import { closeSync, lstatSync, openSync, readdirSync, readlinkSync, readSync } from "node:fs";
import { Readable } from "node:stream";

/** The scratch size dumpNar uses, and a good one for callers: big reads, few pieces. */
export const NAR_SCRATCH_SIZE = 1 << 20;
/**
 * The least scratch a caller may give: every header (tokens, a name of up to NAME_MAX bytes, a symlink
 * target of up to PATH_MAX) fits whole, so only file contents are ever split across pieces.
 */
export const NAR_SCRATCH_MIN = 8192;
const NAME_MAX_ROOM = NAR_SCRATCH_MIN - 512;

const S_IXUSR = 0o100;
const SLASH = Buffer.from("/");

/** str(word) for the constant tokens, encoded once. */
function token(word: string): Buffer {
  const bytes = Buffer.from(word);
  const out = Buffer.alloc(8 + padded(bytes.length));
  out.writeUInt32LE(bytes.length, 0);
  bytes.copy(out, 8);
  return out;
}
const padded = (n: number) => n + ((8 - (n % 8)) % 8);

// Token runs that always go together, joined so that each is one copy into the scratch.
const MAGIC = token("nix-archive-1");
const OPEN_TYPE = Buffer.concat([token("("), token("type")]);
const REGULAR = token("regular");
const EXECUTABLE = Buffer.concat([token("executable"), token("")]);
const CONTENTS = token("contents");
const SYMLINK_TARGET = Buffer.concat([token("symlink"), token("target")]);
const DIRECTORY = token("directory");
const ENTRY_NAME = Buffer.concat([token("entry"), token("("), token("name")]);
const NODE = token("node");
const CLOSE = token(")");
/** Room for the biggest run of tokens written without a string between them. */
const HEADER_ROOM = 256;

/**
 * A NAR serialised on demand into a caller's scratch buffer: each piece is a view of the scratch, valid
 * until the next `next()` (or `return()`, which also closes an open file).
 */
export type NarSource = (scratch: Buffer) => Iterator<Buffer, void, undefined>;

/** The NAR of `path` as a NarSource. */
export function narSource(path: string): NarSource {
  return (scratch) => narPieces(path, scratch);
}

/**
 * Serialises the NAR of `path` (a file, directory or symlink) into `scratch`, yielding it (a view of its
 * filled part) whenever it is full and at the end. Throws if the path cannot be read, has a type a NAR
 * cannot hold, or a file shrinks while being read.
 */
export function* narPieces(path: string, scratch: Buffer): Generator<Buffer, void, undefined> {
  if (scratch.length < NAR_SCRATCH_MIN)
    throw new RangeError(`a NAR scratch buffer needs ${NAR_SCRATCH_MIN} bytes at least`);
  const capacity = scratch.length;
  let fill = 0;

  // The writers below assume room was made (with `room`): only `yield` can hand the scratch over.
  const put = (bytes: Uint8Array) => {
    scratch.set(bytes, fill);
    fill += bytes.length;
  };
  const putLength = (n: number) => {
    // u64 LE; a Number holds any file size exactly, so two u32 halves, without a BigInt per file.
    scratch.writeUInt32LE(n % 0x1_0000_0000, fill);
    scratch.writeUInt32LE(Math.floor(n / 0x1_0000_0000), fill + 4);
    fill += 8;
  };
  const putPadding = (n: number) => {
    const pad = padded(n) - n;
    if (pad) scratch.fill(0, fill, fill + pad);
    fill += pad;
  };
  const putString = (bytes: Uint8Array) => {
    putLength(bytes.length);
    put(bytes);
    putPadding(bytes.length);
  };
  /** Whether `n` more bytes fit; when not, the caller yields the scratch first. */
  const fits = (n: number) => capacity - fill >= n;
  const take = () => {
    const piece = scratch.subarray(0, fill);
    fill = 0;
    return piece;
  };
  const tooLong = (what: string, file: Buffer) =>
    new Error(`${what} of '${file.toString()}' is too long for a NAR scratch of ${capacity} bytes`);

  function* node(file: Buffer): Generator<Buffer, void, undefined> {
    const stat = lstatSync(file);
    if (!fits(HEADER_ROOM)) yield take();
    put(OPEN_TYPE);
    if (stat.isFile()) {
      put(REGULAR);
      if (stat.mode & S_IXUSR) put(EXECUTABLE);
      put(CONTENTS);
      const size = stat.size;
      putLength(size);
      if (size > 0) {
        const fd = openSync(file, "r");
        try {
          // Straight into the scratch: as much as fits, then out it goes.
          for (let position = 0; position < size; ) {
            if (fill === capacity) yield take();
            const want = Math.min(capacity - fill, size - position);
            const bytesRead = readSync(fd, scratch, fill, want, position);
            if (bytesRead === 0) throw new Error(`${file.toString()} shrank while being read`);
            fill += bytesRead;
            position += bytesRead;
          }
        } finally {
          closeSync(fd);
        }
      }
      if (!fits(8 + HEADER_ROOM)) yield take();
      putPadding(size);
    } else if (stat.isSymbolicLink()) {
      const target = readlinkSync(file, { encoding: "buffer" });
      if (target.length > NAME_MAX_ROOM) throw tooLong("the target", file);
      if (!fits(SYMLINK_TARGET.length + 8 + padded(target.length) + HEADER_ROOM)) yield take();
      put(SYMLINK_TARGET);
      putString(target);
    } else if (stat.isDirectory()) {
      put(DIRECTORY);
      const names = readdirSync(file, { encoding: "buffer" }).sort(Buffer.compare);
      for (const name of names) {
        if (name.length > NAME_MAX_ROOM) throw tooLong("an entry name", file);
        if (!fits(ENTRY_NAME.length + 8 + padded(name.length) + NODE.length)) yield take();
        put(ENTRY_NAME);
        putString(name);
        put(NODE);
        yield* node(Buffer.concat([file, SLASH, name]));
        if (!fits(HEADER_ROOM)) yield take();
        put(CLOSE);
      }
    } else {
      throw new Error(`file '${file.toString()}' has an unsupported type`);
    }
    put(CLOSE);
  }

  put(MAGIC);
  yield* node(Buffer.from(path));
  if (fill > 0) yield take();
}

/**
 * The NAR of `path` (a file, directory or symlink) as a byte stream; errors if the path cannot be read.
 * Each chunk is a copy of a piece (a stream's consumer may hold on to what it is given).
 */
export function dumpNar(path: string): Readable {
  let pieces: Iterator<Buffer, void, undefined> | undefined;
  return new Readable({
    highWaterMark: NAR_SCRATCH_SIZE,
    read() {
      try {
        pieces ??= narPieces(path, Buffer.allocUnsafe(NAR_SCRATCH_SIZE));
        const next = pieces.next();
        this.push(next.done ? null : Buffer.from(next.value));
      } catch (error) {
        this.destroy(error as Error);
      }
    },
    destroy(error, done) {
      // Closes the file being read, if any.
      try {
        pieces?.return?.();
      } catch {}
      done(error);
    },
  });
}
