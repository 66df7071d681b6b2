// Which real services the test run has. test/run.sh starts PostgreSQL and Ceph RGW and exports their
// addresses; a suite that needs one and finds it missing is skipped with a loud message locally, and
// fails under CI=true (in CI every suite must run).
import process from "node:process";

export interface PostgresService {
  url: string;
}
export interface S3Service {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
}

const inCi = process.env.CI === "true" || process.env.CI === "1";

function missing(what: string, variable: string): undefined {
  const message = `${what} is not available (${variable} unset): run the suite through test/run.sh`;
  if (inCi) throw new Error(`CI=true and ${message}`);
  process.stderr.write(`\n!!!!!!!! SKIPPING: ${message} !!!!!!!!\n\n`);
  return undefined;
}

export function postgresService(): PostgresService | undefined {
  const url = process.env.NIXSTASH_TEST_PG_URL;
  return url ? { url } : missing("PostgreSQL", "NIXSTASH_TEST_PG_URL");
}

export function s3Service(): S3Service | undefined {
  const endpoint = process.env.NIXSTASH_TEST_S3_ENDPOINT;
  if (!endpoint) return missing("S3 (Ceph RGW)", "NIXSTASH_TEST_S3_ENDPOINT");
  return {
    endpoint,
    accessKey: process.env.NIXSTASH_TEST_S3_ACCESS_KEY ?? "",
    secretKey: process.env.NIXSTASH_TEST_S3_SECRET_KEY ?? "",
    region: process.env.NIXSTASH_TEST_S3_REGION ?? "us-east-1",
  };
}

/** Scratch directory for this run (test/run.sh makes one; falls back to the OS temp dir). */
export function testTmp(): string {
  return process.env.NIXSTASH_TEST_TMP ?? "/tmp";
}
