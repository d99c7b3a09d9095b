"""Which delivery of a message this is: RabbitMQ counts returns in x-delivery-count; the
in-process transport keeps no count, so the consumer counts there, and only there."""
from types import SimpleNamespace

from shared.consumer import EventConsumer
from shared.events import Event


def _message(count=None):
    return SimpleNamespace(headers={} if count is None else {"x-delivery-count": count})


EVENT = Event(type="test.thing.happened", source="/test", subject="s", data={})


def test_on_rabbitmq_the_broker_counts_and_nothing_is_kept_in_memory():
    consumer = EventConsumer("amqp://guest:guest@127.0.0.1:5672//", "test", {})
    assert [consumer._attempt(_message(), EVENT) for _ in range(3)] == [1, 1, 1]
    assert consumer._attempt(_message(count=2), EVENT) == 3
    assert consumer._local_attempts == {}


def test_in_process_the_consumer_counts_each_delivery():
    consumer = EventConsumer("memory://", "test", {})
    assert [consumer._attempt(_message(), EVENT) for _ in range(3)] == [1, 2, 3]
