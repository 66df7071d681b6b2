// Puts and deletes of keys, counted, for what a driver keeps from reads (s3.ts: small objects in memory;
// disk-cache.ts: copies on disk). A read notes `count` when it begins; once it has its bytes, it keeps them
// only if `changedSince` says no put or delete of its key began or ended meanwhile: the bytes it read may be
// the older ones. Each put and delete calls `change` when it begins and again when it ends, so that a read
// begun while one was on its way sees its end. The last number of each key is remembered for the most recent
// keys only; past that, a read older than the newest number forgotten counts as changed.
export class KeyChanges {
  #count = 0;
  readonly #last = new Map<string, number>();
  /** The newest number dropped from #last. */
  #forgotten = 0;

  constructor(readonly remembered: number) {}

  /** Changes counted so far: what a read notes when it begins. */
  get count(): number {
    return this.#count;
  }

  /** A put or delete of key began or ended. */
  change(key: string): void {
    this.#count++;
    this.#last.delete(key);
    this.#last.set(key, this.#count);
    if (this.#last.size > this.remembered) {
      const [oldest, number] = this.#last.entries().next().value!;
      this.#last.delete(oldest);
      this.#forgotten = number;
    }
  }

  /** Whether key changed, or may have, since a read noted `seen`. */
  changedSince(key: string, seen: number): boolean {
    return this.#forgotten > seen || (this.#last.get(key) ?? 0) > seen;
  }
}
