-- Bulk ingestion: POST pre-generated msgpack batches to /api/v1/views/batch with a Bearer token.
--
--   wrk -t1 -c16 -d10s -s loadtest/wrk/post_batch.lua http://127.0.0.1:8080 -- <token> <body file>...
--
-- The body files are written first by the harness (python -m loadtest.bench) or by
-- python -m loadtest.bodies; each is one msgpack array of view events. init() reads every file and
-- formats one request per body; request() cycles through them.

local requests = {}
local count, next_index = 0, 1

function init(args)
  local token = args[1]
  if token == nil or #args < 2 then
    error("usage: -- <token> <body file>...")
  end
  for i = 2, #args do
    local f = assert(io.open(args[i], "rb"))
    local body = f:read("*a")
    f:close()
    local headers = {
      ["Host"] = wrk.host,
      ["Content-Type"] = "application/msgpack",
      ["Authorization"] = "Bearer " .. token,
    }
    count = count + 1
    requests[count] = wrk.format("POST", "/api/v1/views/batch", headers, body)
  end
  next_index = 1 + (tonumber(index) or 0) % count
end

local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("index", nthreads)
end

function request()
  local r = requests[next_index]
  next_index = next_index % count + 1
  return r
end
