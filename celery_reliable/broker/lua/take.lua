-- The atomic fetch's take (celery_reliable.broker.redis_fetch); MAX_TAKES and MAX_TAKES_TRACKED are
-- replaced by their values when the script is loaded.
-- KEYS: the n lists in the order to take from (stage lists first), the quarantine list of each,
-- then the unacked hash and index, the takes hash and the worker's held set (redis_liveness).
-- ARGV[1]: the time to index the delivery under; ARGV[2]: the id to quarantine an entry under;
-- ARGV[3]: the worker's id ('' for none: no held set).
-- Returns {key number, entry, 1, tag} for a message taken and recorded, {key number, entry, 0
-- (cannot be delivered) or 2 (taken MAX_TAKES times), ''} for an entry moved to the quarantine
-- list, or nil. The hash value is built around the raw entry (never re-encoded), exactly as
-- ``json.dumps([message, exchange, routing_key])`` would.
local n = (#KEYS - 4) / 2
local takes = KEYS[2 * n + 3]
local held = KEYS[2 * n + 4]
for i = 1, n do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local why = 0
    local ok, msg = pcall(cjson.decode, raw)
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      local props = msg.properties
      local info = props.delivery_info
      local tag = props.delivery_tag
      if type(tag) == 'string' and tag ~= '' and type(info) == 'table'
          and type(info.exchange) == 'string' and type(info.routing_key) == 'string'
          and (msg.headers == nil or type(msg.headers) == 'table')
          and (msg.body == nil or type(msg.body) == 'string') then
        if redis.call('HINCRBY', takes, tag, 1) < MAX_TAKES then
          if redis.call('HLEN', takes) > MAX_TAKES_TRACKED then
            redis.call('DEL', takes)
          end
          redis.call('ZADD', KEYS[2 * n + 2], ARGV[1], tag)
          redis.call('HSET', KEYS[2 * n + 1], tag,
            '[' .. raw .. ', ' .. cjson.encode(info.exchange) .. ', ' .. cjson.encode(info.routing_key) .. ']')
          if ARGV[3] ~= '' then
            redis.call('SADD', held, tag)
          end
          return {i, raw, 1, tag}
        end
        redis.call('HDEL', takes, tag)
        why = 2
      end
    end
    redis.call('LPUSH', KEYS[n + i], ARGV[2] .. ':' .. raw)
    return {i, raw, why, ''}
  end
end
return false
