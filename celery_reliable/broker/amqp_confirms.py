"""RabbitMQ publisher confirms for a channel that publishes a batch without waiting per message.

A confirm-mode channel numbers its messages 1, 2, ...; the broker acks or nacks them by number,
``multiple`` covering every number up to the one named, and returns a ``mandatory`` message no
queue took. :class:`Confirms` keeps the outcome of each message of a batch, so the caller can say
exactly which were taken (acked, not returned), refused, or not answered.

The channel does not write a message when it is published: its frames are encoded
(:mod:`.amqp_wire`) and kept until :meth:`Confirms.write`, which sends all kept so far in one
write. The numbering is the order of publishing, which is the order of the frames written.
"""

from __future__ import annotations

from typing import Any

from .amqp_wire import publish_frames


class Confirms:
    """Publisher confirms of one confirm-mode channel that publishes without waiting.

    RabbitMQ numbers the messages of a confirm-mode channel 1, 2, ...; acks and nacks name a
    delivery tag, ``multiple`` covering every tag up to it.
    """

    def __init__(self) -> None:
        self.published = 0  # tags handed out so far on this channel
        self.first = 1  # first tag of the current batch
        self.results: list[bool | None] = []  # per tag of the batch: acked, nacked, unknown
        self.low = 0  # index of the first unresolved tag of the batch
        self.open = 0  # tags of the batch without an answer
        self.returned: dict[str, str] = {}  # task id -> why RabbitMQ returned it (unroutable)
        self.unwritten: list[bytes] = []  # frames of messages published, not written yet
        self.unwritten_bytes = 0

    def start(self) -> None:
        self.first = self.published + 1
        self.results = []
        self.low = 0
        self.open = 0
        self.returned = {}
        self.unwritten = []
        self.unwritten_bytes = 0

    def keep(self, frames: bytes) -> None:
        """A message published: its frames wait for :meth:`write`; it has the next number."""
        self.unwritten.append(frames)
        self.unwritten_bytes += len(frames)
        self.published_one()

    def write(self, channel: Any, timeout: float | None) -> None:
        """Write the frames kept so far on ``channel``'s connection, in one write bounded by ``timeout``."""
        if not self.unwritten:
            return
        data = b"".join(self.unwritten)
        self.unwritten = []
        self.unwritten_bytes = 0
        from amqp.exceptions import RecoverableConnectionError

        connection = channel.connection
        if connection is None or connection.transport is None:
            raise RecoverableConnectionError("connection already closed")
        transport = connection.transport
        try:
            with transport.having_timeout(timeout):
                transport.write(data)
        except TimeoutError:
            # part of the data may be written: the connection cannot be used any more
            raise RecoverableConnectionError("basic_publish: timed out") from None
        connection.bytes_sent += 1  # (what py-amqp's own writer counts, for heartbeats)

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """basic.return of a mandatory message: RabbitMQ acks it too, but no queue has it."""
        properties = getattr(message, "properties", None) or {}
        task_id = str(properties.get("correlation_id") or "")
        self.returned[task_id] = f"Unroutable: {exc} (exchange {exchange!r}, routing key {routing_key!r})"

    def published_one(self) -> None:
        self.published += 1
        self.results.append(None)
        self.open += 1

    def _resolve(self, tag: int, multiple: bool, acked: bool) -> None:
        index = tag - self.first
        if index >= len(self.results):
            index = len(self.results) - 1
        if multiple:
            for i in range(self.low, index + 1):
                if self.results[i] is None:
                    self.results[i] = acked
                    self.open -= 1
        elif 0 <= index and self.results[index] is None:
            self.results[index] = acked
            self.open -= 1
        while self.low < len(self.results) and self.results[self.low] is not None:
            self.low += 1

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, True)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, False)

    def confirmed(self, start: int, end: int) -> bool | None:
        """Outcome of the tags ``start..end`` (batch indexes, end exclusive): all acked, some nacked, or not known."""
        outcome: bool | None = True
        for result in self.results[start:end]:
            if result is False:
                return False
            if result is None:
                outcome = None
        return outcome


def read_arrived(channel: Any, limit: int = 100_000) -> None:
    """Handle the frames that have arrived on ``channel``'s connection (confirms, returns), without waiting."""
    connection = channel.connection
    if connection is None:
        return
    for _ in range(limit):
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:
            return


def confirm_channel(connection: Any) -> tuple[Any, Confirms]:
    """A new channel of ``connection`` (py-amqp) in confirm mode whose publishes are kept for
    :meth:`Confirms.write` (no write, no wait per message), and the :class:`Confirms` that records
    their confirms as they arrive."""
    channel: Any = connection.channel()
    channel.confirm_select()
    channel._confirm_selected = True
    confirms = Confirms()

    def publish_no_wait(
        msg: Any,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
    ) -> None:
        connection = channel.connection
        if connection is None:
            from amqp.exceptions import RecoverableConnectionError

            raise RecoverableConnectionError("connection already closed")
        frame_max = connection.frame_max
        confirms.keep(publish_frames(msg, channel.channel_id, frame_max, exchange, routing_key, mandatory, immediate))

    channel.basic_publish = publish_no_wait
    channel.events["basic_ack"].add(confirms.on_ack)
    channel.events["basic_nack"].add(confirms.on_nack)
    channel.events["basic_return"].add(confirms.on_return)
    return channel, confirms
