-- Shared by every bench script (wrk 4 on LuaJIT): msgpack and JSON encoders for the request
-- bodies, the optional response check, and the machine-readable report printed by done().
--
-- Environment (set by bench/load.py):
--   BENCH_KEY     API key sent as `Authorization: Bearer <key>`
--   BENCH_CHECK   "1": check every response (status < 300, BENCH_EXPECT present, BENCH_REJECT
--                 absent); used during the warm-up only, since reading bodies in Lua costs wrk CPU
--   BENCH_EXPECT  a plain substring every good answer contains (JSON text or msgpack bytes)
--   BENCH_REJECT  a plain substring no good answer contains (default "error")
--   BENCH_NONCE   makes generated ids (requestIds) unique across runs on one database
local M = {}

-- msgpack ------------------------------------------------------------------------------------
-- Values: Lua strings (text), integers (|v| < 2^53), booleans, M.null, arrays (Lua sequences)
-- and ordered maps built with M.map(k1, v1, k2, v2, ...), so key order is stable.

M.null = setmetatable({}, { __tostring = function() return "null" end })
local MAP = {}

function M.map(...)
  return { [MAP] = { ... } }
end

local char, floor = string.char, math.floor

local function be(v, bytes)  -- big-endian, no table: this runs per request
  if bytes == 2 then return char(floor(v / 256) % 256, v % 256) end
  if bytes == 4 then
    return char(floor(v / 16777216) % 256, floor(v / 65536) % 256, floor(v / 256) % 256, v % 256)
  end
  return be(floor(v / 4294967296), 4) .. be(v % 4294967296, 4)
end

local function mp_str(s)
  local n = #s
  if n < 32 then return char(0xa0 + n) .. s end
  if n < 256 then return "\217" .. char(n) .. s end
  if n < 65536 then return "\218" .. be(n, 2) .. s end
  return "\219" .. be(n, 4) .. s
end

local function mp_int(v)
  assert(v == floor(v), "msgpack: integers only")
  if v >= 0 then
    if v < 128 then return char(v) end
    if v < 256 then return "\204" .. char(v) end
    if v < 65536 then return "\205" .. be(v, 2) end
    if v < 4294967296 then return "\206" .. be(v, 4) end
    return "\207" .. be(v, 8)
  end
  if v >= -32 then return char(256 + v) end
  if v >= -128 then return "\208" .. char(256 + v) end
  if v >= -32768 then return "\209" .. be(65536 + v, 2) end
  if v >= -2147483648 then return "\210" .. be(4294967296 + v, 4) end
  error("msgpack: integer out of range")
end

local function mp_len(n, fix, b16, b32)
  if n < 16 then return char(fix + n) end
  if n < 65536 then return b16 .. be(n, 2) end
  return b32 .. be(n, 4)
end

function M.msgpack(v)
  local t = type(v)
  if t == "string" then return mp_str(v) end
  if t == "number" then return mp_int(v) end
  if t == "boolean" then return v and "\195" or "\194" end
  if v == nil or v == M.null then return "\192" end
  local pairs_ = v[MAP]
  if pairs_ then
    local out = { mp_len(#pairs_ / 2, 0x80, "\222", "\223") }
    for i = 1, #pairs_, 2 do
      out[#out + 1] = mp_str(pairs_[i])
      out[#out + 1] = M.msgpack(pairs_[i + 1])
    end
    return table.concat(out)
  end
  local out = { mp_len(#v, 0x90, "\220", "\221") }
  for i = 1, #v do out[#out + 1] = M.msgpack(v[i]) end
  return table.concat(out)
end

-- JSON (the same values) -----------------------------------------------------------------------

local function json_str(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

M.json_str = json_str

function M.json(v)
  local t = type(v)
  if t == "string" then return json_str(v) end
  if t == "number" then return string.format("%d", v) end
  if t == "boolean" then return tostring(v) end
  if v == nil or v == M.null then return "null" end
  local pairs_ = v[MAP]
  if pairs_ then
    local out = {}
    for i = 1, #pairs_, 2 do out[#out + 1] = json_str(pairs_[i]) .. ":" .. M.json(pairs_[i + 1]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  local out = {}
  for i = 1, #v do out[#out + 1] = M.json(v[i]) end
  return "[" .. table.concat(out, ",") .. "]"
end

-- Codec by name: "msgpack" or "json" (BENCH_CODEC).
function M.codec(name)
  if name == "msgpack" then return M.msgpack, "application/msgpack" end
  return M.json, "application/json"
end

function M.headers(content_type)
  local h = { ["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "") }
  if content_type then h["Content-Type"] = content_type end
  return h
end

-- Threads, checking and the report -------------------------------------------------------------

local threads = {}
local next_id = 0

-- Runs in the main Lua state once per wrk thread, before the thread's own copy of the script.
function M.setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end

-- Installs the response check in a thread's state when BENCH_CHECK=1.
function M.install_check(env)
  if os.getenv("BENCH_CHECK") ~= "1" then return end
  local expect = os.getenv("BENCH_EXPECT") or ""
  local reject = os.getenv("BENCH_REJECT") or "error"
  env.checked, env.bad, env.first_bad = 0, 0, ""
  env.response = function(status, headers, body)
    env.checked = env.checked + 1
    body = body or ""
    local ok = status < 300 and (expect == "" or body:find(expect, 1, true) ~= nil)
      and (reject == "" or body:find(reject, 1, true) == nil)
    if not ok then
      env.bad = env.bad + 1
      if env.first_bad == "" then env.first_bad = status .. " " .. body:sub(1, 300) end
    end
  end
end

local function printable(s)
  return (s:gsub("[^%w%p ]", "."))
end

function M.done(summary, latency, requests)
  local checked, bad, first_bad = 0, 0, ""
  for _, t in ipairs(threads) do
    checked = checked + (t:get("checked") or 0)
    bad = bad + (t:get("bad") or 0)
    local fb = t:get("first_bad")
    if fb and fb ~= "" and first_bad == "" then first_bad = fb end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,'
      .. '"mean_us":%.1f,"max_us":%.1f,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,'
      .. '"timeouts":%d,"checked":%d,"bad":%d,"first_bad":%s}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout,
    checked, bad, json_str(printable(first_bad))))
end

return M
