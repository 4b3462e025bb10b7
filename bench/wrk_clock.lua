-- A monotonic clock in milliseconds for wrk scripts (wrk's own timers are per connection, not per
-- request): `local now_ms = dofile(<dir> .. "wrk_clock.lua")`. Shared by bench/wrk_replay.lua and
-- tests/integration/wrk_paced.lua.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long sec; long nsec; } xz_timespec;
int clock_gettime(int clock_id, xz_timespec *tp);
]]
local clock = ffi.new("xz_timespec")
return function()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.sec) * 1000 + tonumber(clock.nsec) / 1e6
end
