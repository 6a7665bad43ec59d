-- Single anonymous views, no body, to random content ids: the script of the single-view ratio benchmark.
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/post_view.lua http://127.0.0.1:8080 -- [prefix] [pool] [pace ms]
--
-- prefix (default "lt-") and pool (default 10000): ids are <prefix>0 .. <prefix><pool-1>, so the
-- service aggregates over ~pool distinct keys rather than one. Every request is formatted once in
-- init(); request() only picks one, so wrk spends its time on the socket, not in Lua. With pace ms > 0,
-- each connection waits that long after an answer before its next request (wrk's delay()): a paced
-- load below the peak, for latency at a given rate.

local requests = {}
local pool = 10000

function init(args)
  local prefix = args[1] or "lt-"
  pool = tonumber(args[2] or "10000")
  local pace = tonumber(args[3] or "0")
  if pace > 0 then
    delay = function() return pace end -- wrk looks for delay() after init()
  end
  math.randomseed(os.time() * 1000 + (tonumber(index) or 0))
  local headers = { ["Host"] = wrk.host }
  for i = 0, pool - 1 do
    -- body "" makes wrk.format send "Content-Length: 0" (a POST without a body).
    requests[i + 1] = wrk.format("POST", "/api/v1/content/" .. prefix .. i .. "/views", headers, "")
  end
end

local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("index", nthreads)
end

function request()
  return requests[math.random(pool)]
end
