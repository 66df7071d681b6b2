// What every verb receives: the dependencies of the server, injected once by createApp's caller.
import type { Logger } from "pino";
import type { Database } from "./db/database.ts";
import type { Repo } from "./db/repo.ts";
import type { DecoderPool } from "./decode-pool.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { SecretBox } from "./secrets.ts";
import type { Storage } from "./storage/storage.ts";
import type { AccessLog } from "./verbs/access-log.ts";
import type { BodyBytesSeen } from "./young-garbage.ts";

export interface ServerSettings {
  /** zstd level for NARs the server compresses itself. */
  zstdLevel: number;
  /** Answer NAR downloads with a 302 to a presigned URL when the storage can make one. */
  redirectNars: boolean;
  /** How long a presigned NAR URL stays valid. */
  presignSeconds: number;
  /** Base URL clients use, for the snippets the server prints. */
  publicUrl: string;
}

export interface Context {
  database: Database;
  repo: Repo;
  storage: Storage;
  secrets: SecretBox;
  log: Logger;
  clock: () => number;
  settings: ServerSettings;
  /** Records narinfo and NAR reads in batches (last access, download counters); absent: reads are not recorded. */
  access?: AccessLog | undefined;
  /** Prometheus instruments (metrics.ts); absent: nothing is measured (tests building bare contexts). */
  metrics?: ServerMetrics | undefined;
  /** Worker threads that decode zstd upload bodies; absent: uploads decode on the main thread. */
  decoders?: DecoderPool | undefined;
  /** Told the upload body bytes taken in, so their dead Buffers are collected as they go (young-garbage.ts). */
  bodyBytesSeen?: BodyBytesSeen | undefined;
}
