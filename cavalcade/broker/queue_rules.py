"""The rules of the queues a write batch touches, read from the cached topology:
length limits with their overflow, delivery limits, and where dead messages go."""

from __future__ import annotations

from collections.abc import Sequence

from cavalcade.domain.deadletter import copy_properties, dead_letter_target, keeps_copy
from cavalcade.domain.limits import BatchRules, delivery_limit, queue_limit
from cavalcade.domain.properties import parse_properties
from cavalcade.domain.routing import Headers, route
from cavalcade.storage.records import DeadRow, NewMessage

from .node import NodeState
from .rows import message_row
from .topology import VhostTopology


class QueueRules:
    """Queue limits, delivery limits and dead-letter routing of one node's topology."""

    def __init__(self, node: NodeState) -> None:
        self.node = node

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules:
        """Limits of the queues a batch publishes to, and delivery limits of requeues."""
        rules = BatchRules()
        for qid in {m.queue_id for m in messages} | requeued:
            found = self.node.queue_by_id(qid)
            limit = queue_limit(found[1].arguments) if found else None
            if limit is not None:
                rules.limits[qid] = limit
        for qid in requeued:
            found = self.node.queue_by_id(qid)
            count = delivery_limit(found[1].arguments) if found else None
            if count is not None:
                rules.delivery_limits[qid] = count
        return rules

    def has_dead_letter_exchange(self, queue_id: int) -> bool:
        found = self.node.queue_by_id(queue_id)
        return found is not None and "x-dead-letter-exchange" in found[1].arguments

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        """Copies of dead messages for their queue's ``x-dead-letter-exchange`` (none: dropped)."""
        copies: list[NewMessage] = []
        for row in rows:
            found = self.node.queue_by_id(row.queue_id)
            target = dead_letter_target(found[1].arguments, row.routing_key) if found else None
            if found is None or target is None:
                continue
            vh, q = found
            dlx, key = target
            raw = copy_properties(
                row.properties, queue=q.name, reason=reason, exchange=row.exchange,
                routing_key=row.routing_key,
            )  # fmt: skip
            props = parse_properties(raw)
            for qid in _targets(vh, dlx, key, props.headers):
                if not keeps_copy(reason, q.id, qid):
                    continue
                tq = vh.queues_by_id.get(qid)
                copies.append(
                    message_row(
                        qid,
                        tq.arguments if tq is not None else {},
                        props,
                        exchange=dlx,
                        routing_key=key,
                        body=row.body,
                        persistent=row.persistent,
                        expiration=None,
                    )
                )
        return copies


def _targets(vh: VhostTopology, dlx: str, key: str, headers: Headers) -> list[int]:
    """Queues a dead-lettered copy reaches (the default exchange: the queue named ``key``)."""
    if dlx == "":
        target = vh.queues.get(key)
        return [target.id] if target is not None else []
    ex = vh.exchanges_by_name.get(dlx)
    if ex is None:
        return []
    return sorted(route(vh.exchanges, ex, key, headers, vh.exchanges_by_name))
