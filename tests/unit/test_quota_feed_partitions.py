"""The quota feed waits for a just-created topic's partitions instead of following nothing."""

from __future__ import annotations

import asyncio

import pytest

from tokenpulse.errors import ServiceUnavailable
from tokenpulse.streams import quota_feed
from tokenpulse.streams.quota_feed import topic_partitions


class Client:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def force_metadata_update(self) -> bool:
        self.consumer.refreshes += 1
        return True


class Consumer:
    """Knows the topic's partitions only after `known_after` metadata refreshes."""

    def __init__(self, known_after: int | None) -> None:
        self.known_after = known_after
        self.refreshes = 0
        self._client = Client(self)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        if self.known_after is None or self.refreshes < self.known_after:
            return None
        return {0, 1}


async def test_partitions_are_waited_for_until_the_metadata_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quota_feed, "METADATA_RETRY_S", 0.0)
    deadline = asyncio.get_running_loop().time() + 30
    assert await topic_partitions(Consumer(known_after=0), "q", deadline) == {0, 1}
    late = Consumer(known_after=3)  # one refresh used to be all it got
    assert await topic_partitions(late, "q", deadline) == {0, 1}
    assert late.refreshes == 3


async def test_a_topic_without_partitions_is_a_clear_error_not_an_empty_feed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quota_feed, "METADATA_RETRY_S", 0.01)
    deadline = asyncio.get_running_loop().time() + 0.1
    with pytest.raises(ServiceUnavailable, match="no partitions for the quota topic 'q'") as err:
        await topic_partitions(Consumer(known_after=None), "q", deadline)
    assert err.value.details == {"topic": "q"}
