-- Single stats reads of random content ids: the single side of the reads benchmark.
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/get_stats.lua http://127.0.0.1:8080 -- [prefix] [pool]
--
-- ids are <prefix>0 .. <prefix><pool-1>; every request is formatted once in init().

local requests = {}
local pool = 1000

function init(args)
  local prefix = args[1] or "rd-"
  pool = tonumber(args[2] or "1000")
  math.randomseed(os.time() * 1000 + (tonumber(index) or 0))
  local headers = { ["Host"] = wrk.host }
  for i = 0, pool - 1 do
    requests[i + 1] = wrk.format("GET", "/api/v1/content/" .. prefix .. i .. "/stats", headers)
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
