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
// Output comes in chunks of about CHUNK bytes: headers and small files are gathered, big files are read
// CHUNK at a time (never held whole in memory).
import { type FileHandle, lstat, open, readdir, readlink } from "node:fs/promises";
import { Readable } from "node:stream";

const CHUNK = 1 << 20;
const ZEROS = Buffer.alloc(8);
const S_IXUSR = 0o100;

function str(text: string | Buffer): Buffer[] {
  const bytes = typeof text === "string" ? Buffer.from(text) : text;
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(bytes.length));
  const pad = (8 - (bytes.length % 8)) % 8;
  return pad ? [length, bytes, ZEROS.subarray(0, pad)] : [length, bytes];
}

/** Constant tokens, encoded once. */
const TOKEN = Object.fromEntries(
  ["nix-archive-1", "(", ")", "type", "regular", "executable", "", "contents", "symlink", "target"]
    .concat(["directory", "entry", "name", "node"])
    .map((word) => [word, Buffer.concat(str(word))]),
) as Record<string, Buffer>;

async function* serialise(path: string): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const put = (...parts: Buffer[]) => {
    for (const part of parts) {
      pending.push(part);
      pendingBytes += part.length;
    }
  };
  const take = (): Buffer => {
    const out = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    return out;
  };

  async function* node(file: Buffer): AsyncGenerator<Buffer> {
    const stat = await lstat(file);
    put(TOKEN["("]!, TOKEN.type!);
    if (stat.isFile()) {
      put(TOKEN.regular!);
      if (stat.mode & S_IXUSR) put(TOKEN.executable!, TOKEN[""]!);
      const size = stat.size;
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(size));
      put(TOKEN.contents!, length);
      if (size > 0) {
        let handle: FileHandle | undefined;
        try {
          handle = await open(file, "r");
          let position = 0;
          while (position < size) {
            // Small files join the pending chunk; big ones go out CHUNK at a time.
            const want = Math.min(CHUNK, size - position);
            const buffer = Buffer.allocUnsafe(want);
            let filled = 0;
            while (filled < want) {
              const { bytesRead } = await handle.read(buffer, filled, want - filled, position + filled);
              if (bytesRead === 0) throw new Error(`${file.toString()} shrank while being read`);
              filled += bytesRead;
            }
            position += want;
            put(buffer);
            if (pendingBytes >= CHUNK) yield take();
          }
        } finally {
          await handle?.close();
        }
      }
      const pad = (8 - (size % 8)) % 8;
      if (pad) put(ZEROS.subarray(0, pad));
    } else if (stat.isSymbolicLink()) {
      put(TOKEN.symlink!, TOKEN.target!, ...str(await readlink(file, { encoding: "buffer" })));
    } else if (stat.isDirectory()) {
      put(TOKEN.directory!);
      const names = (await readdir(file, { encoding: "buffer" })).sort(Buffer.compare);
      for (const name of names) {
        put(TOKEN.entry!, TOKEN["("]!, TOKEN.name!, ...str(name), TOKEN.node!);
        yield* node(Buffer.concat([file, SLASH, name]));
        put(TOKEN[")"]!);
      }
    } else {
      throw new Error(`file '${file.toString()}' has an unsupported type`);
    }
    put(TOKEN[")"]!);
    if (pendingBytes >= CHUNK) yield take();
  }

  put(TOKEN["nix-archive-1"]!);
  yield* node(Buffer.from(path));
  if (pendingBytes > 0) yield take();
}

const SLASH = Buffer.from("/");

/** The NAR of `path` (a file, directory or symlink) as a byte stream; errors if the path cannot be read. */
export function dumpNar(path: string): Readable {
  return Readable.from(serialise(path), { objectMode: false, highWaterMark: CHUNK });
}
