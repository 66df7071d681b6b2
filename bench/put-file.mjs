// Measure 5's load generator, in a small process of its own: PUTs one file (read as a stream, 1 MiB at a time)
// and prints the answer, the seconds from the first byte sent to the end of the response, and its own CPU
// seconds, as one JSON line. Not from the bench's own process: its heap (the workload, the results) makes
// every collection the body's buffers set off cost more, and that sender shares the two cores with the
// server (a 1 GiB body took the bench process 2.5-2.8 CPU s; BENCHMARKS.md, session 12).
//   node bench/put-file.mjs URL FILE HEADERS_JSON
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { createReadStream, statSync } from "node:fs";
import http from "node:http";

const [url, file, headersJson] = process.argv.slice(2);
if (!url || !file || !headersJson) throw new Error("usage: put-file.mjs URL FILE HEADERS_JSON");
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const { status, body } = await new Promise((resolve, reject) => {
  const req = http.request(
    url,
    {
      method: "PUT",
      headers: { ...JSON.parse(headersJson), "content-length": String(statSync(file).size) },
    },
    (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => {
        text += d;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    },
  );
  req.on("error", reject);
  createReadStream(file, { highWaterMark: 1 << 20 }).pipe(req);
});
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${JSON.stringify({ status, body, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
);
