-- wrk script: GET /api/pull with a JSON body (Limit 20) on a preloaded chat. Copied from
-- /work/shared/bench/pull.lua; done() also prints p90, max and the duration.
-- Usage: PULL_CHAT=pa:pb wrk -t1 -c64 -d10s --latency -s bench/pull.lua http://127.0.0.1:8080/api/pull
-- Set PULL_MODE=query to send the request as a query string instead of a JSON body.
local CHAT = os.getenv("PULL_CHAT") or "pa:pb"
local LIMIT = tonumber(os.getenv("PULL_LIMIT") or "20")
local MODE = os.getenv("PULL_MODE") or "body"

local threads = {}
function setup(thread) table.insert(threads, thread) end

-- CHECK=1: verify each body has exactly PULL_LIMIT messages and has_more (chat must hold > LIMIT msgs)
bad = 0
if os.getenv("CHECK") == "1" then
  function response(status, headers, body)
    local _, n = string.gsub(body, '"send_time"', '')
    if status ~= 200 or n ~= LIMIT or not string.find(body, '"has_more":true', 1, true) then bad = bad + 1 end
  end
end

function init(args)
  wrk.method = "GET"
  if MODE == "query" then
    wrk.path = wrk.path .. "?Chat=" .. CHAT .. "&Cursor=0&Limit=" .. LIMIT .. "&Reverse=false"
  else
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = string.format('{"Chat":"%s","Cursor":0,"Limit":%d,"Reverse":false}', CHAT, LIMIT)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local nbad = 0
  for _, t in ipairs(threads) do nbad = nbad + (t:get("bad") or 0) end
  if os.getenv("CHECK") == "1" then io.write(string.format("CHECK bad_bodies=%d\n", nbad)) end
  io.write(string.format(
    "SUMMARY req/s=%.1f p50=%.3fms p90=%.3fms p99=%.3fms max=%.3fms non2xx=%d sockerr=%d requests=%d duration=%.3fs\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests, summary.duration / 1e6))
end
