// The check every upload's decoded bytes go through, on whichever thread decodes them (receive.ts on the
// main thread, decode-worker.ts on a worker): count against the claimed NarSize, parse and hash as a NAR
// (nix/nar.ts). It runs where the bytes are decoded so that decoded NAR bytes never cross threads: handing
// each decoded block to the main thread and its buffer back cost two messages per block, each waking the
// other thread, and put the NAR's sha256 and parsing on the thread that also serves every request.
import { formatListing, NarReader } from "../nix/index.ts";

/** What the check says of a complete, valid NAR. */
export interface VerifiedNar {
  /** `sha256:<nix32>` */
  narHash: string;
  narSize: number;
  /** The `.ls` listing, as served. */
  listing: string;
}

/** The decoded NAR went past the NarSize it was claimed to have (the caller words the error). */
export class NarTooLong extends Error {
  override readonly name = "NarTooLong";
  constructor(limit: number) {
    super(`NAR is larger than the claimed NarSize ${limit}`);
  }
}

export class NarCheck {
  readonly #reader = new NarReader();
  readonly #limit: number | undefined;
  #size = 0;

  constructor(limit?: number) {
    this.#limit = limit;
  }

  /** Decoded bytes so far. */
  get size(): number {
    return this.#size;
  }

  /** The next decoded bytes; throws NarTooLong past the limit, NixFormatError at the first bad byte. */
  update(block: Uint8Array): void {
    this.#size += block.length;
    if (this.#limit !== undefined && this.#size > this.#limit) throw new NarTooLong(this.#limit);
    this.#reader.update(block);
  }

  /** End of input: the verified NAR, or NixFormatError if it is incomplete. */
  finish(): VerifiedNar {
    const summary = this.#reader.finish();
    return { narHash: summary.narHash, narSize: summary.narSize, listing: formatListing(summary.listing) };
  }
}
