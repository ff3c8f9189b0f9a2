-- recordUsage over ZAP (BENCH_CODEC, msgpack by default), every request with a requestId never
-- used before: BENCH_NONCE-<thread>-<counter>. Users cycle over BENCH_USER_PREFIX .. 0..BENCH_USERS-1.
-- The body is built for each request (the id and requestId change), the way a client would:
-- the fixed parts are encoded once in init(), the changing values per request.
-- Body: {method: "billing.recordUsage", id: n, params: {user, amount: 1, model: "gpt-bench",
--        totalTokens: 42, requestId}}
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup, done = c.setup, c.done
c.install_check(_G)

local headers, path, nonce, head, mid, tail, close
local users = {}
local counter = 0
local encode_int, encode_str

function init(args)
  local codec = os.getenv("BENCH_CODEC") or "msgpack"
  local encode, ctype = c.codec(codec)
  headers = c.headers(ctype)
  path = os.getenv("BENCH_PATH") or "/api/v1/zap"
  local prefix = os.getenv("BENCH_USER_PREFIX") or "bench/u"
  for i = 0, tonumber(os.getenv("BENCH_USERS") or "100") - 1 do users[#users + 1] = encode(prefix .. i) end
  nonce = (os.getenv("BENCH_NONCE") or "r") .. "-" .. (thread_id or 0) .. "-"
  encode_int, encode_str = encode, encode
  if codec == "msgpack" then
    head = "\131" .. encode("method") .. encode("billing.recordUsage") .. encode("id")
    mid = encode("params") .. "\133" .. encode("user")
    tail = encode("amount") .. encode(1) .. encode("model") .. encode("gpt-bench") .. encode("totalTokens")
      .. encode(42) .. encode("requestId")
    close = ""
  else
    head = '{"method":"billing.recordUsage","id":'
    mid = ',"params":{"user":'
    tail = ',"amount":1,"model":"gpt-bench","totalTokens":42,"requestId":'
    close = "}}"
    encode_int = function(n) return string.format("%d", n) end
  end
end

function request()
  counter = counter + 1
  local body = head .. encode_int(counter) .. mid .. users[counter % #users + 1] .. tail
    .. encode_str(nonce .. counter) .. close
  return wrk.format("POST", path, headers, body)
end
