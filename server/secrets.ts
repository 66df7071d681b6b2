// Signing keys at rest: the Nix secret key text is encrypted with AES-256-GCM under a key derived from the
// server secret (config NIXSTASH_SECRET, or a random file <data dir>/server-secret created with mode 0600).
// Stored form: "v1:" + base64(iv ‖ tag ‖ ciphertext). No API ever returns the plaintext.
//
// Opened signing keys are kept, parsed, for the life of the process (at most OPENED_KEYS of them): parsing
// checks the embedded public key against the seed, one ed25519 scalar multiplication: half the signing
// cost of every pushed path (signing is one more). Holding them adds no exposure: the server secret that
// opens every key is in this process's memory anyway.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseSecretKey, type SecretKey } from "../nix/index.ts";

export interface SecretBox {
  seal(plaintext: string): string;
  open(sealed: string): string;
  /** A sealed Nix secret key, opened and parsed (and kept, by its sealed form). */
  openSigningKey(sealed: string): SecretKey;
}

const OPENED_KEYS = 256;

export function loadServerSecret(configured: string | undefined, dataDir: string): string {
  if (configured) return configured;
  const file = join(dataDir, "server-secret");
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  mkdirSync(dataDir, { recursive: true });
  const secret = randomBytes(32).toString("base64url");
  writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: "wx" });
  chmodSync(file, 0o600);
  return secret;
}

export function createSecretBox(serverSecret: string): SecretBox {
  const key = createHash("sha256")
    .update("nixstash signing-key encryption v1\0")
    .update(serverSecret)
    .digest();
  const opened = new Map<string, SecretKey>();
  const box: SecretBox = {
    seal(plaintext) {
      const iv = randomBytes(12);
      const cipher = createCipheriv("aes-256-gcm", key, iv);
      const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
      return `v1:${Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64")}`;
    },
    open(sealed) {
      if (!sealed.startsWith("v1:")) throw new Error("unknown encrypted key format");
      const raw = Buffer.from(sealed.slice(3), "base64");
      const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(0, 12));
      decipher.setAuthTag(raw.subarray(12, 28));
      try {
        return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString("utf8");
      } catch {
        throw new Error(
          "cannot decrypt a signing key: the server secret differs from the one it was sealed with",
        );
      }
    },
    openSigningKey(sealed) {
      let key = opened.get(sealed);
      if (!key) {
        key = parseSecretKey(box.open(sealed));
        if (opened.size >= OPENED_KEYS) opened.clear();
        opened.set(sealed, key);
      }
      return key;
    },
  };
  return box;
}
