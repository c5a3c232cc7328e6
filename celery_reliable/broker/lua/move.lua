-- Quarantine of an entry already recorded as unacknowledged (celery_reliable.broker.redis_quarantine).
-- Moves an entry the take script recorded to a quarantine list, atomically. KEYS: the quarantine
-- list, unacked, its index, the takes hash; ARGV: the quarantine element, the delivery tag.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
