// Our own native addons (server/native, built by `npm ci`'s install script with node-gyp), loaded from where
// the sources (server/) and the bundle (server/dist/) find them. Each is optional: without it (installed with
// --ignore-scripts, a platform it does not build on) the caller keeps a plain-Node way, and the reason it
// did not load is kept for start.ts to log once.
import { createRequire } from "node:module";

/** The addon `name` (server/native/build/Release/<name>.node), or why it is not there. */
export function loadAddon<T>(
  name: string,
): { addon: T; error: undefined } | { addon: undefined; error: string } {
  if (process.platform !== "linux") return { addon: undefined, error: `not on Linux (${process.platform})` };
  const require = createRequire(import.meta.url);
  const errors: string[] = [];
  for (const path of [`./native/build/Release/${name}.node`, `../native/build/Release/${name}.node`]) {
    try {
      return { addon: require(path) as T, error: undefined };
    } catch (error) {
      errors.push(`${path}: ${(error as Error).message.split("\n")[0]}`);
    }
  }
  return { addon: undefined, error: errors.join("; ") };
}
