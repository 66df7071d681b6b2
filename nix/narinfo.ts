// The narinfo file: `<hash32>.narinfo`, the metadata of one store path in a binary cache.
//
// PROTOCOL.md: lines `Key: value\n`; the value starts two characters after the colon; a final `\n` is
// required; CR is rejected. Unknown keys are ignored; order is free. Written as Nix does:
//   StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize, References, Deriver, System, Sig..., CA
// Required: StorePath (full path), URL, NarHash, NarSize > 0. Missing or empty Compression means bzip2.
// References: space-separated basenames, sorted; with none, `References: ` keeps its trailing space (Nix 2.8
// looks for the end of a value from two characters past the colon, so without the space it swallows the next
// line). Deriver: a basename, `unknown-deriver` = none. CA: `fixed:[r:]<algo>:<hash>` or `text:sha256:<hash>`.
// Hashes may arrive in any form Nix accepts (see hash.ts) and are kept as `sha256:<nix32>`.
//
// Beyond Nix (which is lenient here), this parser refuses what no Nix writes and a verifying server should not
// guess at: a line without ": ", a repeated single-valued key, numbers with signs, spaces or leading zeros.
// Like Nix's std::set fields, References and Sig come back sorted without duplicates, and are written so.

import { NixFormatError, quote } from "./errors.ts";
import { normaliseHash } from "./hash.ts";
import { DEFAULT_STORE_DIR, parseStorePath, parseStorePathBasename } from "./store-path.ts";

export interface NarInfo {
  /** full store path */
  storePath: string;
  url: string;
  compression: string;
  /** `sha256:<nix32>` of the file at `url` */
  fileHash?: string;
  fileSize?: number;
  /** `sha256:<nix32>` of the uncompressed NAR */
  narHash: string;
  narSize: number;
  /** basenames, sorted */
  references: string[];
  /** basename; absent = unknown */
  deriver?: string;
  system?: string;
  /** `keyname:base64sig` */
  sigs: string[];
  ca?: string;
}

export const UNKNOWN_DERIVER = "unknown-deriver";

const DECIMAL_RE = /^(0|[1-9][0-9]*)$/;
const CA_RE = /^(text|fixed):\S+$/;

function sortedUnique(xs: readonly string[]): string[] {
  return [...new Set(xs)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function parseDecimal(key: string, value: string, fail: (m: string) => never): number {
  if (!DECIMAL_RE.test(value)) fail(`${key} ${quote(value)} is not a plain decimal number`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) fail(`${key} ${value} is too large`);
  return n;
}

export function parseNarInfo(text: string, storeDir: string = DEFAULT_STORE_DIR): NarInfo {
  if (text.length === 0) throw new NixFormatError("invalid narinfo: it is empty");
  if (text.includes("\r")) throw new NixFormatError("invalid narinfo: it contains a carriage return (CR)");
  if (!text.endsWith("\n"))
    throw new NixFormatError("invalid narinfo: the last line does not end with a newline");

  const lines = text.slice(0, -1).split("\n");
  const seen = new Set<string>();
  const sigs: string[] = [];
  let storePath: string | undefined;
  let url: string | undefined;
  let compression = "";
  let fileHash: string | undefined;
  let fileSize: number | undefined;
  let narHash: string | undefined;
  let narSize: number | undefined;
  let references: string[] = [];
  let deriver: string | undefined;
  let system: string | undefined;
  let ca: string | undefined;

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const fail = (message: string): never => {
      throw new NixFormatError(`invalid narinfo, line ${i + 1}: ${message}`);
    };
    const colon = line.indexOf(":");
    if (colon < 0) fail(`${quote(line)} is not a "Key: value" line`);
    const key = line.slice(0, colon);
    if (line[colon + 1] !== " ") {
      fail(`${quote(line)} lacks the space after ":" (write "${key}: " even when the value is empty)`);
    }
    const value = line.slice(colon + 2);
    if (key !== "Sig") {
      if (seen.has(key)) fail(`${key} appears more than once`);
      seen.add(key);
    }
    // Nix's parser only rethrows "corrupt"; naming the field is the useful part here.
    const field = <T>(f: () => T): T => {
      try {
        return f();
      } catch (e) {
        if (e instanceof NixFormatError) fail(`${key}: ${e.message}`);
        throw e;
      }
    };
    switch (key) {
      case "StorePath":
        storePath = field(() => parseStorePath(value, storeDir).path);
        break;
      case "URL":
        if (value === "") fail("URL is empty");
        url = value;
        break;
      case "Compression":
        compression = value;
        break;
      case "FileHash":
        fileHash = field(() => normaliseHash(value));
        break;
      case "FileSize":
        fileSize = parseDecimal(key, value, fail);
        break;
      case "NarHash":
        narHash = field(() => normaliseHash(value));
        break;
      case "NarSize":
        narSize = parseDecimal(key, value, fail);
        if (narSize === 0) fail("NarSize is 0");
        break;
      case "References":
        references = sortedUnique(
          value
            .split(" ")
            .filter((r) => r !== "")
            .map((r) => field(() => parseStorePathBasename(r, storeDir).basename)),
        );
        break;
      case "Deriver":
        deriver =
          value === UNKNOWN_DERIVER
            ? undefined
            : field(() => parseStorePathBasename(value, storeDir).basename);
        break;
      case "System":
        system = value === "" ? undefined : value;
        break;
      case "Sig":
        if (value === "") fail("Sig is empty");
        sigs.push(value);
        break;
      case "CA":
        if (!CA_RE.test(value)) fail(`CA ${quote(value)} is not "fixed:..." or "text:..."`);
        ca = value;
        break;
      default:
        break; // unknown keys are ignored, as Nix does
    }
  }

  const missing = (key: string): never => {
    throw new NixFormatError(`invalid narinfo: the ${key} line is missing`);
  };
  const info: NarInfo = {
    storePath: storePath ?? missing("StorePath"),
    url: url ?? missing("URL"),
    compression: compression === "" ? "bzip2" : compression,
    narHash: narHash ?? missing("NarHash"),
    narSize: narSize ?? missing("NarSize"),
    references,
    sigs: sortedUnique(sigs),
  };
  if (fileHash !== undefined) info.fileHash = fileHash;
  if (fileSize !== undefined) info.fileSize = fileSize;
  if (deriver !== undefined) info.deriver = deriver;
  if (system !== undefined) info.system = system;
  if (ca !== undefined) info.ca = ca;
  return info;
}

/** Serialise as Nix does (key order, sorted References and Sig, `References: ` even when empty). */
export function formatNarInfo(info: NarInfo): string {
  let out = "";
  const line = (key: string, value: string): void => {
    if (value.includes("\n") || value.includes("\r")) {
      throw new NixFormatError(`cannot write narinfo: the ${key} value contains a line break`);
    }
    out += `${key}: ${value}\n`;
  };
  line("StorePath", info.storePath);
  line("URL", info.url);
  line("Compression", info.compression);
  if (info.fileHash !== undefined) line("FileHash", info.fileHash);
  if (info.fileSize !== undefined) line("FileSize", String(info.fileSize));
  line("NarHash", info.narHash);
  line("NarSize", String(info.narSize));
  line("References", sortedUnique(info.references).join(" "));
  if (info.deriver !== undefined) line("Deriver", info.deriver);
  if (info.system !== undefined && info.system !== "") line("System", info.system);
  for (const sig of sortedUnique(info.sigs)) line("Sig", sig);
  if (info.ca !== undefined) line("CA", info.ca);
  return out;
}
