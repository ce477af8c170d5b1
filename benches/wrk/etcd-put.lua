-- Puts a fresh key with a 256-byte value per request through etcd's JSON gateway
-- (POST /v3/kv/put), the twin of submit.lua. Usage:
--   wrk -t1 -c64 -d10s -s etcd-put.lua http://127.0.0.1:12379
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
local value = b64(string.rep("x", 256))
local counter = 0
local prefix = "k"
init = function(args)
  prefix = "k" .. tostring(math.random(1, 1000000000)) .. "-"
end
request = function()
  counter = counter + 1
  local key = b64(string.format("%s%012d", prefix, counter))
  return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" },
    '{"key":"' .. key .. '","value":"' .. value .. '"}')
end
