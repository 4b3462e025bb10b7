-- Replays a fixed stream of request bodies in order on one connection (wrk -t1 -c1), then stops,
-- writing one line per request to WRK_OUT: index, status, latency ms, x-cache, x-cache-computed,
-- x-total-time-ms and the response body, tab-separated, and a last line END. Used by
-- bench/cache_replay.py: wrk's C client adds a few microseconds per request where Python's
-- http.client added about 0.9 ms, more than a cache hit itself now costs end to end.
--
-- Env: WRK_TEXTS (a Lua file returning the list of JSON bodies), WRK_OUT, WRK_PATH (appended to
-- the URL's path), WRK_BYPASS (non-empty: send Cache-Control: no-cache, no-store).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local now_ms = dofile(here .. "wrk_clock.lua")

local bodies = dofile(os.getenv("WRK_TEXTS"))
local path = string.gsub(wrk.path or "", "/$", "") .. (os.getenv("WRK_PATH") or "/v1/analyze")
local headers = { ["Content-Type"] = "application/json" }
if (os.getenv("WRK_BYPASS") or "") ~= "" then headers["Cache-Control"] = "no-cache, no-store" end
local out = nil
local answered = 0
local sent_at = 0

function init(args)
  out = assert(io.open(os.getenv("WRK_OUT"), "w"))
end

function request()
  -- The next body is the first one not yet answered: wrk may call request() more often than it
  -- sends (it builds one ahead at connect), so a counter of calls would drift from the responses.
  local body = bodies[math.min(answered + 1, #bodies)]
  sent_at = now_ms()
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  local ms = now_ms() - sent_at
  answered = answered + 1
  local flat = string.gsub(string.gsub(body or "", "\t", " "), "\n", " ")
  out:write(string.format("%d\t%d\t%.4f\t%s\t%s\t%s\t%s\n", answered, status, ms,
    hdrs["x-cache"] or "", hdrs["x-cache-computed"] or "1", hdrs["x-total-time-ms"] or "nan", flat))
  if answered == #bodies then
    out:write("END\n")
    out:close()
    wrk.thread:stop()
  end
end
