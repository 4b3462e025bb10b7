-- Paced load for tests/integration/test_overload.py. Run with one connection per thread
-- (wrk -tN -cN): each connection sends one request every WRK_INTERVAL_MS whatever the previous
-- answer was (it never catches up with a burst when it falls behind), so N connections offer about
-- N * 1000 / WRK_INTERVAL_MS req/s, bounded by N in flight. WRK_INTERVAL_MS=0 is a closed loop.
-- done() prints one line "WRK_JSON {...}": counts per status, latency of the 200s (measured here,
-- per request), and how many refusals lacked Retry-After or a JSON error body.
--
-- Env: WRK_TEXTS (a Lua file returning a list of JSON bodies), WRK_PATH (appended to the URL's
-- path, the app's route prefix; wrk.format alone would drop it), WRK_INTERVAL_MS.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local now_ms = dofile(here .. "../../bench/wrk_clock.lua")

local bodies = dofile(os.getenv("WRK_TEXTS"))
local path = string.gsub(wrk.path or "", "/$", "") .. (os.getenv("WRK_PATH") or "/v1/analyze")
local interval = tonumber(os.getenv("WRK_INTERVAL_MS") or "0")
local headers = { ["Content-Type"] = "application/json" }

local threads = {}
local thread_id = 0

function setup(thread)
  thread:set("offset", thread_id * 7919)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = offset or 0
  math.randomseed(counter + 1) -- each thread its own start offset
  statuses = {}
  lat200 = {}
  n200 = 0
  no_retry_after = 0
  not_json = 0
  sent_at = 0
  slot = nil
end

function request()
  sent_at = now_ms()
  counter = counter + 1
  return wrk.format("POST", path, headers, bodies[(counter % #bodies) + 1])
end

function delay()
  if interval <= 0 then return 0 end
  local t = now_ms()
  if slot == nil then -- wrk asks before the first request too: spread the connections' starts
    slot = t + math.random() * interval
  else
    slot = math.max(slot + interval, t)
  end
  return math.floor(slot - t)
end

function response(status, hdrs, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 200 then
    n200 = n200 + 1
    lat200[n200] = now_ms() - sent_at
    return
  end
  if (status == 429 or status == 503) and not (hdrs["retry-after"] or hdrs["Retry-After"]) then
    no_retry_after = no_retry_after + 1
  end
  if string.sub(body or "", 1, 9) ~= '{"error":' then not_json = not_json + 1 end
end

local function percentile(sorted, p)
  if #sorted == 0 then return -1 end
  local i = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[i]
end

function done(summary, latency, requests)
  local by_status, lat, no_ra, nj = {}, {}, 0, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses") or {}) do by_status[k] = (by_status[k] or 0) + v end
    for _, v in ipairs(t:get("lat200") or {}) do lat[#lat + 1] = v end
    no_ra = no_ra + (t:get("no_retry_after") or 0)
    nj = nj + (t:get("not_json") or 0)
  end
  table.sort(lat)
  local parts = {}
  for k, v in pairs(by_status) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"statuses":{%s},'
      .. '"ok_latency_ms":{"count":%d,"p50":%.2f,"p99":%.2f,"max":%.2f},'
      .. '"refusals_without_retry_after":%d,"errors_not_json":%d,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ","),
    #lat, percentile(lat, 50), percentile(lat, 99), percentile(lat, 100),
    no_ra, nj, e.connect, e.read, e.write, e.timeout))
end
