"""Confirm tracking: which messages of a batch RabbitMQ acked, nacked, returned or left unanswered."""

from __future__ import annotations

from types import SimpleNamespace

from celery_reliable.broker.amqp_confirms import Confirms


def _published(confirms: Confirms, count: int) -> None:
    for _ in range(count):
        confirms.published_one()


def test_single_acks_and_nacks_resolve_their_own_messages() -> None:
    confirms = Confirms()
    confirms.start()
    _published(confirms, 3)
    confirms.on_ack(1, False)
    confirms.on_nack(3, False)
    assert (confirms.confirmed(0, 1), confirms.confirmed(1, 2), confirms.confirmed(2, 3)) == (True, None, False)
    assert confirms.open == 1


def test_multiple_resolves_every_tag_up_to_the_one_named() -> None:
    confirms = Confirms()
    confirms.start()
    _published(confirms, 5)
    confirms.on_ack(4, True)
    assert confirms.confirmed(0, 4) is True and confirms.confirmed(4, 5) is None
    assert confirms.open == 1


def test_a_second_batch_counts_from_where_the_channel_is() -> None:
    confirms = Confirms()
    confirms.start()
    _published(confirms, 2)
    confirms.on_ack(2, True)
    confirms.start()  # the channel's tags go on: 3, 4
    _published(confirms, 2)
    confirms.on_ack(3, False)
    confirms.on_nack(4, False)
    assert (confirms.confirmed(0, 1), confirms.confirmed(1, 2)) == (True, False)


def test_a_span_is_acked_only_when_every_tag_in_it_is() -> None:
    confirms = Confirms()
    confirms.start()
    _published(confirms, 3)  # one message published as three frames
    confirms.on_ack(1, False)
    confirms.on_ack(3, False)
    assert confirms.confirmed(0, 3) is None
    confirms.on_ack(2, False)
    assert confirms.confirmed(0, 3) is True


def test_a_returned_message_is_named_by_its_task_id() -> None:
    confirms = Confirms()
    confirms.start()
    message = SimpleNamespace(properties={"correlation_id": "task-7"})
    confirms.on_return(Exception("NO_ROUTE"), "", "gone-queue", message)
    assert confirms.returned == {"task-7": "Unroutable: NO_ROUTE (exchange '', routing key 'gone-queue')"}
    confirms.start()
    assert confirms.returned == {}
