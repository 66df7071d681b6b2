// Client side of the HTTP measures, kept as thin as possible so that the server is what is measured.
// - narinfos on one connection: a minimal HTTP/1.1 client on a raw socket (no parser, no agent);
// - NAR downloads on N connections: node:http keep-alive agents, following one redirect (S3 presigned URLs).
import http from "node:http";
import net from "node:net";

/** GETs every path one after another on ONE keep-alive connection; returns the statuses seen. */
export async function sequentialGets(base: URL, paths: string[]): Promise<Map<number, number>> {
  const socket = net.connect({ host: base.hostname, port: Number(base.port), noDelay: true });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const statuses = new Map<number, number>();
  let buffered: Buffer = Buffer.alloc(0);
  let waiting: (() => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    waiting?.();
  });
  let failure: Error | undefined;
  socket.on("error", (e) => {
    failure = e;
    waiting?.();
  });
  const more = () =>
    new Promise<void>((resolve) => {
      waiting = resolve;
    });
  const host = `${base.hostname}:${base.port}`;
  for (const path of paths) {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: nixstash-bench\r\n\r\n`);
    for (;;) {
      if (failure) throw failure;
      const end = buffered.indexOf("\r\n\r\n");
      if (end >= 0) {
        const head = buffered.subarray(0, end).toString("latin1");
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? Number.NaN);
        if (Number.isNaN(length)) throw new Error(`no content-length in response to ${path}: ${head}`);
        if (buffered.length >= end + 4 + length) {
          const status = Number(head.slice(9, 12));
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          buffered = buffered.subarray(end + 4 + length);
          break;
        }
      }
      await more();
    }
  }
  socket.destroy();
  return statuses;
}

/** Downloads every URL (relative to base), `connections` at a time; returns the bytes received. */
export async function downloadAll(base: string, files: string[], connections: number): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const redirectAgent = new http.Agent({ keepAlive: true, maxSockets: connections });
  let next = 0;
  let bytes = 0;
  const get = (url: string, viaRedirect: boolean): Promise<number> =>
    new Promise((resolve, reject) => {
      const req = http.get(url, { agent: viaRedirect ? redirectAgent : agent }, (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 300 && status < 400 && res.headers.location && !viaRedirect) {
          res.resume();
          resolve(get(new URL(res.headers.location, url).toString(), true));
          return;
        }
        if (status !== 200) {
          res.resume();
          reject(new Error(`GET ${url}: ${status}`));
          return;
        }
        let n = 0;
        res.on("data", (chunk: Buffer) => {
          n += chunk.length;
        });
        res.on("end", () => resolve(n));
        res.on("error", reject);
      });
      req.on("error", reject);
    });
  const worker = async () => {
    while (next < files.length) {
      const file = files[next++]!;
      // Not `bytes += await …`: that reads `bytes` before the await, and concurrent workers' sums are lost.
      const got = await get(`${base}/${file}`, false);
      bytes += got;
    }
  };
  try {
    await Promise.all(Array.from({ length: connections }, worker));
  } finally {
    agent.destroy();
    redirectAgent.destroy();
  }
  return bytes;
}

/** GET returning the body as text (setup only, not timed). */
export async function getText(url: string): Promise<{ status: number; text: string }> {
  const res = await fetch(url);
  return { status: res.status, text: await res.text() };
}
