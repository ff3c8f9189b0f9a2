-- getBalance in one of four request styles (BENCH_STYLE), cycling over users:
--   rest     GET  BENCH_PATH?user=<u>&currency=usd             (zapbilling REST, bare, FastAPI)
--   zap      POST BENCH_PATH {method: billing.getBalance, id, params: {user, currency}}
--            in BENCH_CODEC (msgpack or json)
--   jsonrpc  POST BENCH_PATH {jsonrpc: "2.0", method: getBalance, params: {user, currency}, id}
-- Users: BENCH_USER alone, or BENCH_USER_PREFIX .. 0 .. BENCH_USERS-1.
-- Every request is encoded once in init(); request() hands them out in turn.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup, done = c.setup, c.done
c.install_check(_G)

local requests, n = {}, 0

function init(args)
  local style = os.getenv("BENCH_STYLE") or "zap"
  local path = os.getenv("BENCH_PATH") or "/api/v1/zap"
  local users = {}
  if os.getenv("BENCH_USER") then
    users[1] = os.getenv("BENCH_USER")
  else
    local prefix = os.getenv("BENCH_USER_PREFIX") or "bench/u"
    for i = 0, tonumber(os.getenv("BENCH_USERS") or "100") - 1 do users[#users + 1] = prefix .. i end
  end
  for i, user in ipairs(users) do
    if style == "rest" then
      requests[i] = wrk.format("GET", path .. "?user=" .. user .. "&currency=usd", c.headers(nil))
    elseif style == "jsonrpc" then
      local body = c.json(c.map("jsonrpc", "2.0", "method", "getBalance",
        "params", c.map("user", user, "currency", "usd"), "id", i))
      requests[i] = wrk.format("POST", path, c.headers("application/json"), body)
    else
      local encode, ctype = c.codec(os.getenv("BENCH_CODEC") or "msgpack")
      local body = encode(c.map("method", "billing.getBalance", "id", i,
        "params", c.map("user", user, "currency", "usd")))
      requests[i] = wrk.format("POST", path, c.headers(ctype), body)
    end
  end
  n = thread_id or 0
end

function request()
  n = n % #requests + 1
  return requests[n]
end
