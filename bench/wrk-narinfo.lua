-- wrk script for measure 2: cycles through a list of request paths (one per line, written by
-- bench/main.ts: 90% narinfos the cache has, 10% it lacks, shuffled), each thread from its own offset,
-- and prints the totals and latency percentiles as one JSON line at the end.
--   wrk -t2 -c64 -d10s -s bench/wrk-narinfo.lua http://127.0.0.1:PORT -- PATHS_FILE
local paths = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  i = math.random(#paths)
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"connect_errors":%d,"read_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.timeout))
end
