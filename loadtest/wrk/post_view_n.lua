-- Exactly N single views (no body), then stop: the script of the viral-item and exact-count runs.
--
--   wrk -t1 -c64 -d120s -s loadtest/wrk/post_view_n.lua http://127.0.0.1:8080 -- <prefix> <pool> <n> [threads]
--
-- Each thread (pass wrk's -t as [threads], default 1) sends n / threads views to <prefix>0 .. <prefix><pool-1> (pool 1: one viral item,
-- id <prefix>0). Once its quota is sent, a connection asks for GET /__loadtest/idle (a 404 that counts
-- nothing) until every view has been answered, then the thread stops. So, unlike a run cut by -d,
-- no view is left in flight: the service must have counted exactly the views answered 202.
-- -d is only an upper bound. done() prints one line the harness parses:
--   LT_RESULT sent=<views sent> ok=<202s> err=<other statuses on views> idle=<idle requests>

local threads = {}
local requests = {}
local pool, quota = 1, 0
local idle_request
-- Globals, so that done() can read them with thread:get().
sent, ok, err, idle = 0, 0, 0, 0
-- wrk calls request() once on the first thread before the run to check the script (that request is
-- never sent), so the first call there must not count against the quota.
local verify_call = false

function setup(thread)
  table.insert(threads, thread)
  thread:set("index", #threads)
end

function init(args)
  local prefix = args[1] or "viral-"
  pool = tonumber(args[2] or "1")
  local n = tonumber(args[3] or "200000")
  local nthreads = tonumber(args[4] or "1")
  quota = math.floor(n / nthreads)
  local index = tonumber(index) or 1
  if index == 1 then
    quota = quota + n - quota * nthreads
  end
  verify_call = index == 1
  math.randomseed(os.time() * 1000 + index)
  local headers = { ["Host"] = wrk.host }
  for i = 0, pool - 1 do
    requests[i + 1] = wrk.format("POST", "/api/v1/content/" .. prefix .. i .. "/views", headers, "")
  end
  idle_request = wrk.format("GET", "/__loadtest/idle", { ["Host"] = wrk.host })
end

function request()
  if verify_call then
    verify_call = false
    return requests[1]
  end
  if sent < quota then
    sent = sent + 1
    if pool == 1 then
      return requests[1]
    end
    return requests[math.random(pool)]
  end
  return idle_request
end

function response(status, headers, body)
  if status == 404 then
    idle = idle + 1
  elseif status == 202 then
    ok = ok + 1
  else
    err = err + 1
  end
  if ok + err >= quota then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local s, o, e, i = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    o = o + t:get("ok")
    e = e + t:get("err")
    i = i + t:get("idle")
  end
  io.write(string.format("LT_RESULT sent=%d ok=%d err=%d idle=%d duration_us=%d\n",
    s, o, e, i, summary.duration))
end
