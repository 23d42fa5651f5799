"""Pure queue-limit and dead-letter rules: what a full queue refuses, which requeues pass
their delivery limit, where a dead message goes."""

from __future__ import annotations

from cavalcade.domain.deadletter import dead_letter_target, keeps_copy
from cavalcade.domain.limits import (
    UNLIMITED,
    QueueLimit,
    delivery_limit,
    over_delivery_limit,
    queue_limit,
    refusals,
)


def test_queue_limit_from_arguments() -> None:
    assert queue_limit({}) is None
    assert queue_limit({"x-max-length": 2}) == QueueLimit(2, None, "drop-head")
    lim = queue_limit({"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
    assert lim == QueueLimit(None, 10, "reject-publish")
    assert lim.refuses and lim.bounds() == (UNLIMITED, 10)
    assert not QueueLimit(1, None).refuses


def test_delivery_limit_ignores_non_integers() -> None:
    assert delivery_limit({"x-delivery-limit": 3}) == 3
    assert delivery_limit({"x-delivery-limit": True}) is None
    assert delivery_limit({"x-delivery-limit": "3"}) is None
    assert delivery_limit({}) is None


def test_refusals_count_what_the_batch_adds() -> None:
    limits = {
        1: QueueLimit(2, None, "reject-publish"),
        2: QueueLimit(None, 5, "reject-publish-dlx"),
    }
    publishes = [(1, 1), (1, 1), (1, 1), (2, 3), (2, 3), (3, 100)]
    out = refusals(publishes, {1: (1, 0), 2: (0, 0)}, limits)
    # queue 1 holds one: the second publish reaches the limit, the third is refused;
    # queue 2 takes 3 of 5 bytes, the next 3 are refused and dead-lettered.
    assert out.refused == {1, 2, 4}
    assert out.dead_lettered == [4]


def test_over_delivery_limit() -> None:
    requeued = [(10, 1, 3), (11, 1, 2), (12, 2, 9)]
    assert over_delivery_limit(requeued, {1: 2}) == [10]
    assert over_delivery_limit(requeued, {}) == []


def test_dead_letter_target() -> None:
    assert dead_letter_target({}, "rk") is None
    assert dead_letter_target({"x-dead-letter-exchange": ""}, "rk") == ("", "rk")
    args = {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead"}
    assert dead_letter_target(args, "rk") == ("dlx", "dead")


def test_a_copy_into_its_own_queue_is_kept_only_when_rejected() -> None:
    assert keeps_copy("rejected", 1, 1)
    assert not keeps_copy("expired", 1, 1)
    assert keeps_copy("maxlen", 1, 2)
