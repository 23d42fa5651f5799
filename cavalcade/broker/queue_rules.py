"""The rules of the queues a write batch touches, read from the cached topology:
length limits with their overflow, delivery limits, and where dead messages go."""

from __future__ import annotations

from collections.abc import Sequence

from cavalcade.domain.deadletter import dead_letter_properties
from cavalcade.domain.properties import MalformedProperties, parse_properties
from cavalcade.domain.routing import route
from cavalcade.storage.batch import BatchRules, QueueLimit
from cavalcade.storage.records import DeadRow, NewMessage

from .node import NodeState
from .rows import message_row


class QueueRules:
    """Queue limits, delivery limits and dead-letter routing of one node's topology."""

    def __init__(self, node: NodeState) -> None:
        self.node = node

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules:
        """Limits of the queues a batch publishes to, delivery limits, dead-lettering."""
        rules = BatchRules(dead_letter=self.dead_letter)
        for qid in {m.queue_id for m in messages} | requeued:
            found = self.node.queue_by_id(qid)
            if found is None:
                continue
            args = found[1].arguments
            max_len, max_bytes = args.get("x-max-length"), args.get("x-max-length-bytes")
            if isinstance(max_len, int) or isinstance(max_bytes, int):
                rules.limits[qid] = QueueLimit(
                    max_len if isinstance(max_len, int) else None,
                    max_bytes if isinstance(max_bytes, int) else None,
                    str(args.get("x-overflow") or "drop-head"),
                )
        for qid in requeued:
            found = self.node.queue_by_id(qid)
            limit = found[1].arguments.get("x-delivery-limit") if found else None
            if isinstance(limit, int) and not isinstance(limit, bool):
                rules.delivery_limits[qid] = limit
        return rules

    def has_dead_letter_exchange(self, queue_id: int) -> bool:
        found = self.node.queue_by_id(queue_id)
        return found is not None and "x-dead-letter-exchange" in found[1].arguments

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        """Copies of dead messages for their queue's ``x-dead-letter-exchange`` (none: dropped)."""
        copies: list[NewMessage] = []
        for row in rows:
            found = self.node.queue_by_id(row.queue_id)
            if found is None:
                continue
            vh, q = found
            dlx = q.arguments.get("x-dead-letter-exchange")
            if not isinstance(dlx, str):
                continue
            key = q.arguments.get("x-dead-letter-routing-key")
            key = key if isinstance(key, str) else row.routing_key
            try:
                raw = dead_letter_properties(
                    row.properties,
                    queue=q.name,
                    reason=reason,
                    exchange=row.exchange,
                    routing_keys=[row.routing_key],
                )
                props = parse_properties(raw)
            except MalformedProperties:
                props = parse_properties(row.properties)
            if dlx == "":
                target = vh.queues.get(key)
                targets = [target.id] if target is not None else []
            else:
                ex = vh.exchanges_by_name.get(dlx)
                if ex is None:
                    continue
                targets = sorted(route(vh.exchanges, ex, key, props.headers, vh.exchanges_by_name))
            for qid in targets:
                if reason != "rejected" and qid == q.id:
                    continue  # a cycle that no client breaks: RabbitMQ drops it too
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
