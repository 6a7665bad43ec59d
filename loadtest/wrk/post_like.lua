-- Likes by many users: POST or DELETE /api/v1/content/<id>/like with a Bearer token, at random.
--
--   wrk -t1 -c128 -d10s -s loadtest/wrk/post_like.lua http://127.0.0.1:8080 -- <tokens file> [prefix] [pool] [pace ms]
--
-- The tokens file holds one HS256 token per line (users u-0 .. u-1999, signed with the service's
-- ENGAGEMENT_JWT_SECRET), written by the harness (loadtest/likes.py). Content ids are
-- <prefix>0 .. <prefix><pool-1> (default "lk-", 1000). Each request picks a random token, a random id
-- and POST (like) or DELETE (unlike) with equal probability, so states and counts keep moving; both
-- answer 200. The request line of every (method, id) and the headers of every token are formatted
-- once in init(); request() only joins two strings, so wrk spends its time on the socket, not in Lua.
-- With pace ms > 0, each connection waits that long after an answer before its next request.

local lines = { {}, {} } -- [1] POST, [2] DELETE: request line + Host per content id
local auth = {} -- headers per token, up to the end of the request
local ntokens, pool = 0, 1000

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: -- <tokens file> [prefix] [pool]")
  end
  local prefix = args[2] or "lk-"
  pool = tonumber(args[3] or "1000")
  local pace = tonumber(args[4] or "0")
  if pace > 0 then
    delay = function() return pace end -- wrk looks for delay() after init()
  end
  for token in io.lines(path) do
    if #token > 0 then
      ntokens = ntokens + 1
      auth[ntokens] = "Authorization: Bearer " .. token .. "\r\nContent-Length: 0\r\n\r\n"
    end
  end
  if ntokens == 0 then
    error("no tokens in " .. path)
  end
  local host = "Host: " .. wrk.host .. "\r\n"
  for i = 0, pool - 1 do
    local target = " /api/v1/content/" .. prefix .. i .. "/like HTTP/1.1\r\n" .. host
    lines[1][i + 1] = "POST" .. target
    lines[2][i + 1] = "DELETE" .. target
  end
  math.randomseed(os.time() * 1000 + (tonumber(index) or 0))
end

local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("index", nthreads)
end

function request()
  return lines[math.random(2)][math.random(pool)] .. auth[math.random(ntokens)]
end
