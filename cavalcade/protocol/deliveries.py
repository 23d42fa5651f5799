"""A channel's delivery tags, its unacked map and its prefetch accounting (no I/O)."""

from __future__ import annotations

from typing import Protocol

from cavalcade.broker.api import CLAIM_CAP
from cavalcade.errors import PreconditionFailed


class Holder(Protocol):
    """What the ledger counts per consumer (``consumers.Consumer``)."""

    no_ack: bool
    unacked: int
    reserved: int


Unacked = tuple[int, int, "Holder | None"]  # message id, queue id, consumer (None: basic.get)
Taken = list[tuple[int, Unacked]]  # (delivery tag, entry) settled by one method


class Deliveries:
    """Delivery tags, what is delivered but unacked, and the channel's prefetch limits."""

    def __init__(self) -> None:
        self.unacked: dict[int, Unacked] = {}
        self.next_tag = 0
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.global_unacked = 0
        self.global_reserved = 0

    def set_prefetch(self, count: int, global_: bool) -> None:
        """basic.qos: ``global_`` is the channel-wide limit, else the per-consumer one."""
        if global_:
            self.global_prefetch = count
        else:
            self.consumer_prefetch = count

    def credit(self, c: Holder) -> int:
        """How many more deliveries ``c`` may take under the prefetch limits."""
        if c.no_ack:
            # As RabbitMQ's limiter: no-ack deliveries do not count against the channel's
            # (global) prefetch, but wait while it is used up by ack-mode consumers.
            if self.global_prefetch and self.global_unacked >= self.global_prefetch:
                return 0
            return CLAIM_CAP
        credit = CLAIM_CAP
        if self.consumer_prefetch:
            credit = min(credit, self.consumer_prefetch - c.unacked - c.reserved)
        if self.global_prefetch:
            credit = min(credit, self.global_prefetch - self.global_unacked - self.global_reserved)
        return max(credit, 0)

    def reserve(self, c: Holder, n: int) -> None:
        c.reserved += n
        if not c.no_ack:
            self.global_reserved += n

    def release(self, c: Holder, n: int) -> None:
        c.reserved -= n
        if not c.no_ack:
            self.global_reserved -= n

    def track(self, c: Holder | None, message_id: int, queue_id: int, no_ack: bool) -> int:
        """The next delivery tag; an ack-mode delivery is recorded as unacked."""
        self.next_tag += 1
        tag = self.next_tag
        if not no_ack:
            self.unacked[tag] = (message_id, queue_id, c)
            if c is not None:
                c.unacked += 1
                self.global_unacked += 1
        return tag

    def take(self, tag: int, multiple: bool, method_id: int) -> tuple[Taken, set[int]]:
        """Remove what an ack/reject/nack settles (406 for an unknown tag); also the ids of
        the queues whose consumers got credit back."""
        if multiple:
            if tag == 0:
                taken = list(self.unacked.items())
            else:
                taken = [(t, e) for t, e in self.unacked.items() if t <= tag]
                if not taken and tag not in self.unacked:
                    raise PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            for t, _ in taken:
                del self.unacked[t]
        else:
            entry = self.unacked.pop(tag, None)
            if entry is None:
                raise PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            taken = [(tag, entry)]
        queues: set[int] = set()
        for _, (_, qid, c) in taken:
            if c is not None:
                c.unacked -= 1
                self.global_unacked -= 1
                queues.add(qid)
        return taken, queues

    def restore(self, taken: Taken) -> None:
        """tx.rollback: settlements not committed are unacked again, in tag order."""
        for tag, entry in taken:
            self.unacked[tag] = entry
            c = entry[2]
            if c is not None:
                c.unacked += 1
                self.global_unacked += 1
        self.unacked = dict(sorted(self.unacked.items()))


def pairs(taken: Taken) -> list[tuple[int, int]]:
    """(queue id, message id) of settled entries, as requeue and discard take them."""
    return [(e[1], e[0]) for _, e in taken]
