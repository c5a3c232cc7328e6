-- Whether Redis still holds a message, looked for by its delivery tag (celery_reliable.broker.redis_wire).
-- KEYS: the unacked hash, the queue's stage list, the message's list. ARGV: the delivery tag, the text
-- that marks it in a message ('"delivery_tag": "<tag>"', as kombu writes it, also after a restore),
-- the most entries of a list to look at.
-- Returns 1 (held: unacknowledged, staged or queued), 0 (not in Redis), or -1 (a list longer than
-- the limit did not show it: cannot say). One atomic step: a message moving from the list to the
-- stage list to unacked is seen wherever it is.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 1
end
local limit = tonumber(ARGV[3])
local unsure = false
for k = 2, 3 do
  local length = redis.call('LLEN', KEYS[k])
  local seen = 0
  -- from the tail: the oldest entries, where a message sent a while ago is
  while seen < length and seen < limit do
    local chunk = redis.call('LRANGE', KEYS[k], -(seen + 1000), -(seen + 1))
    for _, entry in ipairs(chunk) do
      if string.find(entry, ARGV[2], 1, true) then
        return 1
      end
    end
    seen = seen + 1000
  end
  if length > limit then
    unsure = true
  end
end
if unsure then
  return -1
end
return 0
