-- Submits one task with a 256-byte payload per request to the Session Queue API
-- (POST /v1/sessions/{SESSION}/tasks). Usage:
--   SESSION=s-1 wrk -t1 -c64 -d10s -s submit.lua http://127.0.0.1:7001
local session = os.getenv("SESSION") or error("set SESSION to a session id")
local payload = string.rep("x", 256)
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1, c2 = math.floor(n / 262144) % 64, math.floor(n / 4096) % 64
    local c3, c4 = math.floor(n / 64) % 64, n % 64
    out[#out + 1] = chars:sub(c1 + 1, c1 + 1) .. chars:sub(c2 + 1, c2 + 1)
      .. (b and chars:sub(c3 + 1, c3 + 1) or "=") .. (c and chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end
local body = '{"payload":"' .. b64(payload) .. '"}'
local path = "/v1/sessions/" .. session .. "/tasks"
request = function()
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end
