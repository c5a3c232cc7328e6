"""What knows a transport's wire: broker facts, the Redis list entry, the atomic fetch, quarantine, AMQP confirms."""
