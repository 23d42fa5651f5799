"""NOTIFY events: the wire strings stay what earlier releases send and read."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pytest

from cavalcade.storage.notify import (
    MAX_LISTED,
    OUTBOX_CHANNEL,
    TOPOLOGY_CHANNEL,
    WAKE_CHANNEL,
    ConsumerAdded,
    Event,
    Listener,
    NodesReaped,
    OutboxFilled,
    QueuesWoken,
    TopologyChanged,
    encode,
    parse,
)

NODE = uuid.UUID("5f0c6a43-6f55-4e0e-9d3b-2f4f7f3f1c2a")
OTHER = uuid.UUID("0b7e2c1d-1111-4a4a-8888-123456789abc")


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (QueuesWoken(NODE, frozenset({3, 1, 2})), [(WAKE_CHANNEL, f"{NODE}:1,2,3")]),
        (QueuesWoken(NODE, None), [(WAKE_CHANNEL, f"{NODE}:*")]),
        (QueuesWoken(None, frozenset({7})), [(WAKE_CHANNEL, "-:7")]),
        (QueuesWoken(None, None), [(WAKE_CHANNEL, "-:*")]),
        (ConsumerAdded(NODE, 12), [(WAKE_CHANNEL, f"{NODE}:-12")]),
        (TopologyChanged(NODE, 4), [(TOPOLOGY_CHANNEL, f"{NODE}:4")]),
        (TopologyChanged(NODE, 4, 9), [(TOPOLOGY_CHANNEL, f"{NODE}:4:9")]),
        (NodesReaped(), [(WAKE_CHANNEL, "reaper:*"), (TOPOLOGY_CHANNEL, "reaper")]),
        (OutboxFilled(), [(OUTBOX_CHANNEL, "")]),
    ],
)
def test_wire_strings_and_round_trip(event: Event, wire: list[tuple[str, str]]) -> None:
    assert encode(event) == wire
    assert all(parse(channel, payload) == event for channel, payload in wire)


def test_long_lists_become_a_wake_all() -> None:
    [(channel, payload)] = encode(QueuesWoken(NODE, frozenset(range(10_000, 12_000))))
    assert (channel, payload) == (WAKE_CHANNEL, f"{NODE}:*")
    [(_, listed)] = encode(QueuesWoken(NODE, frozenset(range(100))))
    assert len(listed) <= MAX_LISTED and listed.endswith(",99")


def test_empty_wake_sends_nothing() -> None:
    assert encode(QueuesWoken(NODE, frozenset())) == []


def test_what_sql_functions_send_parses() -> None:
    """cavalcade_wake() and cavalcade_publish() in migration 0007."""
    assert parse(WAKE_CHANNEL, "-:5,6") == QueuesWoken(None, frozenset({5, 6}))
    assert parse(WAKE_CHANNEL, "-:*") == QueuesWoken(None, None)
    assert parse(OUTBOX_CHANNEL, "") == OutboxFilled()


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        (WAKE_CHANNEL, f"{NODE}:"),
        (WAKE_CHANNEL, "garbage"),
        (WAKE_CHANNEL, "nonode:1"),
        (WAKE_CHANNEL, f"{NODE}:1,x"),
        (WAKE_CHANNEL, "-:-5"),
        (WAKE_CHANNEL, f"{NODE}:-x"),
        (WAKE_CHANNEL, f"{NODE}:-"),
        (TOPOLOGY_CHANNEL, f"{NODE}:vhost"),
        ("other_channel", "x"),
    ],
)
def test_unknown_payloads_are_ignored(channel: str, payload: str) -> None:
    assert parse(channel, payload) is None


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def wake_queues(self, queue_ids: Iterable[int]) -> None:
        self.calls.append(("wake", sorted(queue_ids)))

    def wake_all(self) -> None:
        self.calls.append(("wake_all", None))

    def topology_changed(self, vhost_id: int | None = None) -> None:
        self.calls.append(("topology", vhost_id))

    def queue_deleted_elsewhere(self, queue_id: int) -> None:
        self.calls.append(("deleted", queue_id))

    def consumed_elsewhere(self, queue_id: int) -> None:
        self.calls.append(("consumer elsewhere", queue_id))


def _heard(channel: str, payload: str) -> list[tuple[str, object]]:
    target = Target()
    listener = Listener("postgresql://unused", NODE, target)
    listener._on_notify(None, 0, channel, payload)
    return target.calls


def test_listener_acts_on_other_nodes_only() -> None:
    assert _heard(WAKE_CHANNEL, f"{OTHER}:2,1") == [("wake", [1, 2])]
    assert _heard(WAKE_CHANNEL, f"{OTHER}:*") == [("wake_all", None)]
    assert _heard(WAKE_CHANNEL, "-:3") == [("wake", [3])]
    assert _heard(WAKE_CHANNEL, f"{NODE}:1") == []
    assert _heard(WAKE_CHANNEL, f"{OTHER}:-6") == [("consumer elsewhere", 6)]
    assert _heard(WAKE_CHANNEL, f"{NODE}:-6") == []
    assert _heard(TOPOLOGY_CHANNEL, f"{OTHER}:4") == [("topology", 4)]
    assert _heard(TOPOLOGY_CHANNEL, f"{OTHER}:4:9") == [("topology", 4), ("deleted", 9)]
    assert _heard(TOPOLOGY_CHANNEL, f"{NODE}:4:9") == []
    assert _heard(TOPOLOGY_CHANNEL, "reaper") == [("topology", None), ("wake_all", None)]
    assert _heard(WAKE_CHANNEL, "reaper:*") == [("topology", None), ("wake_all", None)]
    assert _heard(WAKE_CHANNEL, "garbage") == []
