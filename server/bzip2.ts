// A streaming bzip2 decoder that makes output only as its consumer reads it.
//
// The format (bzip2 1.0.x, as in Seward's reference and Landley's micro-bunzip, which this follows):
//   stream  = "BZh" level('1'..'9') block* end, byte-aligned only at its end; streams may be concatenated
//   block   = 0x314159265359 crc32 randomised(1) origPtr(24) symbolMap(16 + 16 per used range)
//             groups(3, 2..6) selectors(15) selectorMtf(unary each) huffmanLengths(delta-coded, 1..20)
//             symbols: MTF indices with RUNA/RUNB run lengths, up to level * 100,000 of them
//   end     = 0x177245385090 combinedCrc32, then padding to a byte
// A block's symbols undo to up to 900,000 bytes by the inverse Burrows-Wheeler transform; those bytes are
// then run-length coded (4 equal bytes and a count 0..255), so one block can expand to ~46 MB, and a body
// of a few hundred bytes to gigabytes. This decoder therefore expands a block lazily: it keeps the block's
// transform vector (4 bytes per symbol) and hands out 128 KiB at a time, each only when the consumer asks.
//
// unbzip2-stream, used before, pushed every block whole, built in a JS array of numbers (8 bytes per output
// byte), without backpressure: ~1.3 GB of memory for a 1.4 KB body of 1 GiB of zeros.
import { Duplex } from "node:stream";

/** Bytes handed on per read. */
const OUTPUT_BLOCK = 128 * 1024;
const BLOCK_MAGIC_HI = 0x314159;
const BLOCK_MAGIC_LO = 0x265359;
const END_MAGIC_HI = 0x177245;
const END_MAGIC_LO = 0x385090;
const MAX_CODE_LENGTH = 20;
const MAX_SYMBOLS = 258;
const GROUP_SIZE = 50;
const RUNA = 0;
const RUNB = 1;

/** bzip2's CRC-32: polynomial 0x04c11db7, most significant bit first (not zlib's reflected one). */
const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 24;
    for (let k = 0; k < 8; k++) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    table[i] = c;
  }
  return table;
})();

export function bzip2Error(message: string, cause?: unknown): Error {
  return Object.assign(new Error(message, cause === undefined ? {} : { cause }), { code: "BZIP2_ERROR" });
}

/** Thrown by the bit reader when the input buffered so far ends; the parse is retried with more. */
const NEED_INPUT = Symbol("need input");

export function bunzip2(): Duplex {
  return Duplex.from(async function* (source: AsyncIterable<Buffer>) {
    const decoder = new Bzip2Decoder();
    for await (const chunk of source) {
      decoder.feed(chunk);
      yield* decoder.output(false);
    }
    yield* decoder.output(true);
  });
}

interface HuffmanGroup {
  minLen: number;
  maxLen: number;
  limit: Int32Array;
  base: Int32Array;
  permute: Int32Array;
}

class Bzip2Decoder {
  // Input: `data` from `at` (plus `bits` bits of `bitBuffer`), then the `pending` chunks not yet joined.
  #data: Buffer = Buffer.alloc(0);
  #at = 0;
  #bitBuffer = 0;
  #bits = 0;
  #pending: Buffer[] = [];
  #pendingLength = 0;
  /** Parse again only once this many bytes are buffered: a block that did not fit waits for twice as many. */
  #wanted = 0;

  /** 0 before a stream header (at the start, and after each stream's end); else the stream's level. */
  #level = 0;
  /** Whether a stream header has been read: no input at all is not bzip2 data (bzip2 -d refuses it too). */
  #started = false;
  #streamCrc = 0;
  #tt = new Int32Array(0);

  // The block being expanded: inverse-BWT walk and run-length state, and its CRC so far.
  #remaining = 0;
  #pos = 0;
  #current = 0;
  #run = 0;
  #copies = 0;
  #outByte = 0;
  #blockCrc = 0;
  #expectedBlockCrc = 0;
  #expanding = false;

  // Scratch tables of the block parse.
  readonly #byteCount = new Int32Array(256);
  readonly #symToByte = new Uint8Array(256);
  readonly #mtf = new Uint8Array(256);
  readonly #selectors = new Uint8Array(0x8000);

  feed(chunk: Buffer): void {
    this.#pending.push(chunk);
    this.#pendingLength += chunk.length;
  }

  /** Decoded blocks of up to OUTPUT_BLOCK bytes from the input so far; with `final`, to the end of it. */
  *output(final: boolean): Generator<Buffer> {
    for (;;) {
      if (this.#expanding) {
        const block = Buffer.allocUnsafe(OUTPUT_BLOCK);
        const produced = this.#expand(block);
        if (produced > 0) yield block.subarray(0, produced);
        continue;
      }
      const available = this.#data.length - this.#at + this.#pendingLength;
      if (!final && available < this.#wanted) return;
      this.#join();
      const saved = { at: this.#at, bitBuffer: this.#bitBuffer, bits: this.#bits };
      try {
        if (!this.#parseNext()) {
          if (final && !this.#started) throw bzip2Error("bzip2 data is empty (no BZh header)");
          return;
        }
        this.#wanted = 0;
      } catch (error) {
        if (error !== NEED_INPUT) throw error instanceof Error ? bzip2Error(error.message, error) : error;
        if (final) throw bzip2Error("bzip2 data ends before the end of its stream");
        this.#at = saved.at;
        this.#bitBuffer = saved.bitBuffer;
        this.#bits = saved.bits;
        // A block is most often less than its level's 100,000s of bytes: wait for that much, then twice
        // as much each time, so retried parses cost at most as much again as the input.
        const buffered = this.#data.length - this.#at;
        this.#wanted = Math.max(2 * buffered + 1, Math.max(this.#level, 1) * 100_000 + 25_000);
        return;
      }
    }
  }

  #join(): void {
    if (this.#pending.length === 0) return;
    this.#data = Buffer.concat([this.#data.subarray(this.#at), ...this.#pending]);
    this.#at = 0;
    this.#pending = [];
    this.#pendingLength = 0;
  }

  #read(n: number): number {
    while (this.#bits < n) {
      if (this.#at >= this.#data.length) throw NEED_INPUT;
      this.#bitBuffer = (this.#bitBuffer << 8) | this.#data[this.#at++]!;
      this.#bits += 8;
    }
    this.#bits -= n;
    return (this.#bitBuffer >>> this.#bits) & ((1 << n) - 1);
  }

  #read32(): number {
    return (this.#read(16) << 16) | this.#read(16) | 0;
  }

  /**
   * Parses what comes next: a stream header, a block (then expanding it), or a stream end. False at the
   * end of all input between streams.
   */
  #parseNext(): boolean {
    if (this.#level === 0) {
      if (this.#at >= this.#data.length && this.#bits === 0) return false;
      if (this.#read(24) !== 0x425a68) throw new Error("not bzip2 data (no BZh header)");
      const level = this.#read(8) - 0x30;
      if (level < 1 || level > 9) throw new Error("not bzip2 data (bad block size)");
      this.#level = level;
      this.#started = true;
      this.#streamCrc = 0;
      if (this.#tt.length < level * 100_000) this.#tt = new Int32Array(level * 100_000);
      return true;
    }
    const hi = this.#read(24);
    const lo = this.#read(24);
    if (hi === END_MAGIC_HI && lo === END_MAGIC_LO) {
      if (this.#read32() !== this.#streamCrc) throw new Error("bzip2 stream CRC mismatch");
      this.#bits -= this.#bits % 8; // the padding to a byte
      this.#level = 0;
      return true;
    }
    if (hi !== BLOCK_MAGIC_HI || lo !== BLOCK_MAGIC_LO) throw new Error("bad bzip2 block header");
    this.#parseBlock();
    return true;
  }

  #parseBlock(): void {
    const expectedCrc = this.#read32();
    if (this.#read(1)) throw new Error("randomised bzip2 blocks are not supported");
    const origPtr = this.#read(24);
    const capacity = this.#level * 100_000;
    const tt = this.#tt;

    const used = this.#read(16);
    let symTotal = 0;
    for (let i = 0; i < 16; i++) {
      if (!(used & (1 << (15 - i)))) continue;
      const bits = this.#read(16);
      for (let j = 0; j < 16; j++) if (bits & (1 << (15 - j))) this.#symToByte[symTotal++] = 16 * i + j;
    }
    if (symTotal === 0) throw new Error("bzip2 block uses no symbols");

    const groupCount = this.#read(3);
    if (groupCount < 2 || groupCount > 6) throw new Error("bad bzip2 Huffman group count");
    const nSelectors = this.#read(15);
    if (nSelectors === 0) throw new Error("bzip2 block has no selectors");
    const mtfGroups = [0, 1, 2, 3, 4, 5];
    for (let i = 0; i < nSelectors; i++) {
      let j = 0;
      while (this.#read(1)) if (++j >= groupCount) throw new Error("bad bzip2 selector");
      const group = mtfGroups[j]!;
      mtfGroups.splice(j, 1);
      mtfGroups.unshift(group);
      this.#selectors[i] = group;
    }

    const symCount = symTotal + 2;
    const groups: HuffmanGroup[] = [];
    const lengths = new Uint8Array(MAX_SYMBOLS);
    const countOf = new Int32Array(MAX_CODE_LENGTH + 2);
    for (let g = 0; g < groupCount; g++) {
      let length = this.#read(5);
      for (let s = 0; s < symCount; s++) {
        for (;;) {
          if (length < 1 || length > MAX_CODE_LENGTH) throw new Error("bad bzip2 Huffman code length");
          if (!this.#read(1)) break;
          length += this.#read(1) ? -1 : 1;
        }
        lengths[s] = length;
      }
      let minLen = MAX_CODE_LENGTH;
      let maxLen = 1;
      for (let s = 0; s < symCount; s++) {
        minLen = Math.min(minLen, lengths[s]!);
        maxLen = Math.max(maxLen, lengths[s]!);
      }
      // Canonical Huffman: codes of each length are consecutive, in symbol order.
      const permute = new Int32Array(MAX_SYMBOLS);
      const limit = new Int32Array(MAX_CODE_LENGTH + 2);
      const base = new Int32Array(MAX_CODE_LENGTH + 2);
      let p = 0;
      for (let len = minLen; len <= maxLen; len++)
        for (let s = 0; s < symCount; s++) if (lengths[s] === len) permute[p++] = s;
      countOf.fill(0);
      for (let s = 0; s < symCount; s++) countOf[lengths[s]!]!++;
      let code = 0;
      let seen = 0;
      for (let len = minLen; len < maxLen; len++) {
        code += countOf[len]!;
        limit[len] = code - 1;
        code <<= 1;
        seen += countOf[len]!;
        base[len + 1] = code - seen;
      }
      limit[maxLen] = code + countOf[maxLen]! - 1;
      base[minLen] = 0;
      groups.push({ minLen, maxLen, limit, base, permute });
    }

    const mtf = this.#mtf;
    const byteCount = this.#byteCount;
    for (let i = 0; i < 256; i++) mtf[i] = i;
    byteCount.fill(0);
    let count = 0;
    let run = 0;
    let runBit = 0;
    let selector = 0;
    let left = 0;
    let group = groups[0]!;
    for (;;) {
      if (left-- === 0) {
        left = GROUP_SIZE - 1;
        if (selector >= nSelectors) throw new Error("bzip2 block runs past its selectors");
        group = groups[this.#selectors[selector++]!]!;
      }
      let len = group.minLen;
      let code = this.#read(len);
      while (code > group.limit[len]!) {
        if (++len > group.maxLen) throw new Error("bad bzip2 Huffman code");
        code = (code << 1) | this.#read(1);
      }
      const index = code - group.base[len]!;
      if (index < 0 || index >= MAX_SYMBOLS) throw new Error("bad bzip2 Huffman code");
      const symbol = group.permute[index]!;
      if (symbol === RUNA || symbol === RUNB) {
        if (runBit === 0) {
          runBit = 1;
          run = 0;
        }
        run += symbol === RUNA ? runBit : 2 * runBit;
        runBit *= 2;
        if (run > capacity) throw new Error("bzip2 run longer than its block");
        continue;
      }
      if (runBit !== 0) {
        runBit = 0;
        if (count + run > capacity) throw new Error("bzip2 block larger than its block size");
        const byte = this.#symToByte[mtf[0]!]!;
        byteCount[byte]! += run;
        tt.fill(byte, count, count + run);
        count += run;
      }
      if (symbol > symTotal) break; // end of block
      if (count >= capacity) throw new Error("bzip2 block larger than its block size");
      const i = symbol - 1;
      const value = mtf[i]!;
      mtf.copyWithin(1, 0, i);
      mtf[0] = value;
      const byte = this.#symToByte[value]!;
      byteCount[byte]!++;
      tt[count++] = byte;
    }
    if (origPtr >= count) throw new Error("bzip2 block origin outside the block");

    // Inverse Burrows-Wheeler: link each position to the next, in the high 24 bits beside its byte.
    let sum = 0;
    for (let i = 0; i < 256; i++) {
      const n = byteCount[i]!;
      byteCount[i] = sum;
      sum += n;
    }
    for (let i = 0; i < count; i++) {
      const byte = tt[i]! & 0xff;
      tt[byteCount[byte]!]! |= i << 8;
      byteCount[byte]!++;
    }
    const start = tt[origPtr]!;
    this.#pos = start >>> 8;
    this.#current = start & 0xff;
    this.#run = -1;
    this.#remaining = count;
    this.#copies = 0;
    this.#blockCrc = -1;
    this.#expectedBlockCrc = expectedCrc;
    this.#expanding = true;
  }

  /** Writes the next bytes of the block into `out`; at the block's end checks its CRC. */
  #expand(out: Buffer): number {
    const tt = this.#tt;
    let { pos, current, run, remaining, copies, outByte } = {
      pos: this.#pos,
      current: this.#current,
      run: this.#run,
      remaining: this.#remaining,
      copies: this.#copies,
      outByte: this.#outByte,
    };
    let crc = this.#blockCrc;
    let written = 0;
    while (written < out.length) {
      if (copies > 0) {
        const n = Math.min(copies, out.length - written);
        out.fill(outByte, written, written + n);
        for (let k = 0; k < n; k++) crc = (crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ outByte) & 0xff]!;
        written += n;
        copies -= n;
        continue;
      }
      if (remaining === 0) break;
      remaining--;
      const previous = current;
      const entry = tt[pos]!;
      current = entry & 0xff;
      pos = entry >>> 8;
      // After four equal bytes the next is a count of further copies, not a byte.
      if (run++ === 3) {
        copies = current;
        outByte = previous;
        current = -1;
      } else {
        out[written++] = current;
        crc = (crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ current) & 0xff]!;
      }
      if (current !== previous) run = 0;
    }
    this.#pos = pos;
    this.#current = current;
    this.#run = run;
    this.#remaining = remaining;
    this.#copies = copies;
    this.#outByte = outByte;
    this.#blockCrc = crc;
    if (remaining === 0 && copies === 0) {
      this.#expanding = false;
      const blockCrc = ~crc | 0;
      if (blockCrc !== this.#expectedBlockCrc) throw bzip2Error("bzip2 block CRC mismatch");
      this.#streamCrc = (((this.#streamCrc << 1) | (this.#streamCrc >>> 31)) ^ blockCrc) | 0;
    }
    return written;
  }
}
