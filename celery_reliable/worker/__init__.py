"""From the broker to the task and into the failed table: install, the consumer, ReliableTask, its request."""
