-- recordMeterEvents over ZAP/msgpack: batches of BENCH_BATCH (100) events of meter BENCH_METER,
-- users cycling over BENCH_USER_PREFIX .. 0..BENCH_USERS-1, values 1..10, timestamp = now
-- (absent). 16 different bodies are encoded in init() and sent in turn; none carries an
-- idempotency key, so every event of every request is a new row.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup, done = c.setup, c.done
c.install_check(_G)

local requests, n = {}, 0

function init(args)
  local encode, ctype = c.codec(os.getenv("BENCH_CODEC") or "msgpack")
  local path = os.getenv("BENCH_PATH") or "/api/v1/zap"
  local meter = assert(os.getenv("BENCH_METER"), "BENCH_METER is required")
  local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
  local prefix = os.getenv("BENCH_USER_PREFIX") or "bench/u"
  local users = tonumber(os.getenv("BENCH_USERS") or "100")
  for r = 1, 16 do
    local events = {}
    for i = 1, batch do
      local k = (r * batch + i)
      events[i] = c.map("meterId", meter, "userId", prefix .. (k % users), "value", k % 10 + 1)
    end
    local body = encode(c.map("method", "billing.recordMeterEvents", "id", r, "params", c.map("events", events)))
    requests[r] = wrk.format("POST", path, c.headers(ctype), body)
  end
  n = thread_id or 0
end

function request()
  n = n % #requests + 1
  return requests[n]
end
