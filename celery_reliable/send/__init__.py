"""From the caller to the broker: publish(), the send_task mirror, the publisher, batches, the outbox,
the relay, replay."""
