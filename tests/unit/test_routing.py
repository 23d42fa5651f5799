"""Routing rules of the four exchange types."""

from __future__ import annotations

import pytest

from cavalcade.domain.routing import BindingInfo, ExchangeInfo, headers_match, route, topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "", True),
        ("#", "anything.at.all", True),
        ("*", "", False),
        ("*.#", "", False),
        ("#.*", "", False),
        ("*", "a.b", False),
        ("#.c", "c", True),
        ("#.c", "a.b.c", True),
        ("#.c", "a.b.d", False),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("worker.#", "worker.heartbeat", True),
        ("worker.#", "task.multi", False),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_topic(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_headers_all_and_any() -> None:
    assert headers_match({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 2})
    assert not headers_match({"x-match": "all", "a": 1, "b": "x"}, {"a": 1})
    assert headers_match({"x-match": "any", "a": 1, "b": "x"}, {"a": 1})
    assert not headers_match({"x-match": "any", "a": 1}, {"a": 2})
    assert headers_match({"a": 1}, {"a": 1})  # all is the default
    assert headers_match({"x-match": "all"}, {})  # nothing to match: matches
    assert headers_match({"a": None}, {"a": "anything"})  # void value: presence only
    assert not headers_match({"a": "v"}, None)


def _ex(id_: int, type_: str, *bindings: BindingInfo) -> ExchangeInfo:
    return ExchangeInfo(id=id_, name=f"e{id_}", type=type_, bindings=list(bindings))


def test_route_follows_exchange_bindings_once() -> None:
    # e1 (direct) -> q10 on "k", -> e2 (fanout) on "k"; e2 -> q20 and back to e1 (a loop).
    e1 = _ex(
        1, "direct", BindingInfo(1, "k", {}, queue_id=10), BindingInfo(1, "k", {}, exchange_id=2)
    )
    e2 = _ex(
        2, "fanout", BindingInfo(2, "", {}, queue_id=20), BindingInfo(2, "", {}, exchange_id=1)
    )
    exchanges = {1: e1, 2: e2}
    assert route(exchanges, e1, "k", dict) == {10, 20}
    assert route(exchanges, e1, "other", dict) == set()
    assert route(exchanges, e2, "whatever", dict) == {20}
    assert route(exchanges, e2, "k", dict) == {10, 20}


def test_route_headers_decodes_only_for_headers_exchanges() -> None:
    calls = []

    def headers() -> dict[str, object]:
        calls.append(1)
        return {"a": 1}

    direct = _ex(1, "direct", BindingInfo(1, "k", {}, queue_id=1))
    route({1: direct}, direct, "k", headers)
    assert calls == []
    hx = _ex(2, "headers", BindingInfo(2, "", {"a": 1}, queue_id=5))
    assert route({2: hx}, hx, "", headers) == {5}
    assert calls
