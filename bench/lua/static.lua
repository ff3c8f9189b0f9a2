-- One fixed request: BENCH_METHOD (GET) BENCH_PATH (with its query), body read from
-- BENCH_BODY_FILE (binary-safe) with BENCH_CONTENT_TYPE. For the scenario 4 reads, whose
-- bodies bench/scenarios.py encodes with Python's msgpack.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup, done = c.setup, c.done
c.install_check(_G)

local body = nil
local file = os.getenv("BENCH_BODY_FILE")
if file and file ~= "" then
  local f = assert(io.open(file, "rb"))
  body = f:read("*a")
  f:close()
end
wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.headers = c.headers(os.getenv("BENCH_CONTENT_TYPE"))
wrk.body = body
