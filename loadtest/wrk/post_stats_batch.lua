-- Batch stats reads: POST /api/v1/stats/batch with <size> random content ids each (a feed page).
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/post_stats_batch.lua http://127.0.0.1:8080 -- [prefix] [pool] [size]
--
-- 256 bodies are formatted once in init(); request() picks one.

local requests = {}
local bodies = 256

function init(args)
  local prefix = args[1] or "rd-"
  local pool = tonumber(args[2] or "1000")
  local size = tonumber(args[3] or "50")
  math.randomseed(os.time() * 1000 + (tonumber(index) or 0))
  local headers = { ["Host"] = wrk.host, ["Content-Type"] = "application/json" }
  for b = 1, bodies do
    local ids = {}
    for i = 1, size do
      ids[i] = '"' .. prefix .. math.random(0, pool - 1) .. '"'
    end
    local body = '{"content_ids":[' .. table.concat(ids, ",") .. ']}'
    requests[b] = wrk.format("POST", "/api/v1/stats/batch", headers, body)
  end
end

local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("index", nthreads)
end

function request()
  return requests[math.random(bodies)]
end
