-- wrk script: POST /api/send, random chat among NCHATS (1000) chats uN:vN (random member order),
-- exactly 100-byte unique text, sender = first member. Copied from /work/shared/bench/send.lua;
-- done() also prints p90, max and the duration.
-- Usage: wrk -t1 -c64 -d10s --latency -s bench/send.lua http://127.0.0.1:8080/api/send
local NCHATS = tonumber(os.getenv("NCHATS") or "1000")
local counter = 0
local tid = 0
local pad = string.rep("x", 100)

local threads = {}
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
  table.insert(threads, thread)
end

-- CHECK=1: also verify every response body (slower load generator; use for correctness runs)
bad = 0
if os.getenv("CHECK") == "1" then
  function response(status, headers, body)
    if status ~= 200 or not string.find(body, '"success"', 1, true) then bad = bad + 1 end
  end
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919 + math.floor(os.clock() * 1e6))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local i = math.random(1, NCHATS)
  local a, b = "u" .. i, "v" .. i
  if math.random(2) == 1 then a, b = b, a end
  -- text: 100 bytes = "m" .. tid .. "-" .. counter .. " " padded with x
  local head = string.format("m%s-%010d ", tostring(tid or 0), counter)
  local text = head .. string.sub(pad, 1, 100 - #head) -- exactly 100 bytes
  local body = '{"Chat":"' .. a .. ':' .. b .. '","Text":"' .. text .. '","Sender":"' .. a .. '"}'
  return wrk.format(nil, nil, nil, body)
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
