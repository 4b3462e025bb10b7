-- wrk script: POST /v1/analyze with JSON bodies cycling through real validation texts, and print
-- one machine-readable JSON line (prefixed "WRK_JSON ") from done().
--
--   wrk -t1 -c8 -d10s --latency -s bench/wrk_post.lua http://127.0.0.1:8000
--
-- Env: WRK_TEXTS = path of the bodies file (default bench/texts.lua, made by bench/texts.py);
--      WRK_PATH  = request path (default /v1/analyze).

local texts_file = os.getenv("WRK_TEXTS") or "bench/texts.lua"
local path = os.getenv("WRK_PATH") or "/v1/analyze"
local bodies = dofile(texts_file)
local headers = { ["Content-Type"] = "application/json" }

local threads = {}
local thread_id = 0

function setup(thread)
  -- Runs in the main Lua state: give each thread a distinct start offset, keep it for done().
  thread:set("offset", thread_id * 97)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = offset or 0
  non2xx = 0
  statuses = {}
end

function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  local by_status = {}
  for _, t in ipairs(threads) do
    non2xx_total = non2xx_total + (t:get("non2xx") or 0)
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do by_status[k] = (by_status[k] or 0) + v end
    end
  end
  local status_parts = {}
  for k, v in pairs(by_status) do table.insert(status_parts, string.format('"%s":%d', k, v)) end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local ms = function(us) return us / 1000.0 end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.2f,"bytes":%d,'
      .. '"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"mean":%.3f,"max":%.3f},'
      .. '"non2xx":%d,"non2xx_by_status":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status_ge_400":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)),
    ms(latency.mean), ms(latency.max),
    non2xx_total, table.concat(status_parts, ","),
    e.connect, e.read, e.write, e.timeout, e.status))
end
