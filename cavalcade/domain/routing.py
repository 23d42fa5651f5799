"""Exchange routing: which bindings a message matches (direct, fanout, topic, headers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})
DELAYED_TYPE = "x-delayed-message"  # routes as its ``x-delayed-type``, after ``x-delay`` ms


@dataclass(frozen=True, slots=True)
class BindingInfo:
    """One binding edge from an exchange to a queue (``queue_id``) or exchange."""

    source_id: int
    routing_key: str
    arguments: dict[str, Any]
    queue_id: int | None = None
    exchange_id: int | None = None


Headers = Callable[[], dict[str, Any]]


class _TrieNode:
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.values: list[Any] = []


class TopicTrie:
    """Topic patterns as a trie of words, as RabbitMQ keeps them: matching a routing key
    walks the words of the key, not the list of bindings, so its cost depends on the
    key and on how many patterns share its prefixes, not on how many bindings there are.

    ``*`` and ``#`` are edges like any word; ``#`` may consume zero or more words."""

    __slots__ = ("_root", "size")

    def __init__(self) -> None:
        self._root = _TrieNode()
        self.size = 0

    def add(self, pattern: str, value: Any) -> None:
        node = self._root
        for word in _topic_words(pattern):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _TrieNode()
            node = child
        node.values.append(value)
        self.size += 1

    def remove(self, pattern: str, value: Any) -> bool:
        """Remove one ``value`` stored under ``pattern``; False if it was not there.
        Branches left empty are pruned."""
        path = [self._root]
        words = _topic_words(pattern)
        for word in words:
            child = path[-1].children.get(word)
            if child is None:
                return False
            path.append(child)
        try:
            path[-1].values.remove(value)
        except ValueError:
            return False
        self.size -= 1
        for i in range(len(words), 0, -1):
            node = path[i]
            if node.values or node.children:
                break
            del path[i - 1].children[words[i - 1]]
        return True

    def match(self, routing_key: str) -> list[Any]:
        """Every value whose pattern matches ``routing_key`` (each once)."""
        out: list[Any] = []
        self._walk(self._root, _topic_words(routing_key), 0, out, set())
        return out

    def _walk(
        self,
        node: _TrieNode,
        key: tuple[str, ...],
        i: int,
        out: list[Any],
        seen: set[tuple[int, int]],
    ) -> None:
        state = (id(node), i)
        if state in seen:  # reached again through another "#" split
            return
        seen.add(state)
        children = node.children
        if i == len(key):
            out.extend(node.values)
        else:
            # A key word "*" or "#" also finds the wildcard edge by name: it reaches a
            # state the wildcard reaches anyway, and ``seen`` drops the repeat.
            child = children.get(key[i])
            if child is not None:
                self._walk(child, key, i + 1, out, seen)
            star = children.get("*")
            if star is not None:
                self._walk(star, key, i + 1, out, seen)
        hash_ = children.get("#")
        if hash_ is not None:
            for k in range(i, len(key) + 1):  # "#" takes zero or more words
                self._walk(hash_, key, k, out, seen)


@dataclass(slots=True)
class ExchangeInfo:
    """An exchange as the router sees it.

    Change ``bindings`` through :meth:`add_binding` / :meth:`remove_binding` once the
    exchange routes: they keep the lookup index (built on first use) in step."""

    id: int
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: list[BindingInfo] = field(default_factory=list)
    _index: TopicTrie | dict[str, list[BindingInfo]] | None = field(
        default=None, repr=False, compare=False
    )
    _pos: dict[int, int] | None = field(default=None, repr=False, compare=False)

    def add_binding(self, b: BindingInfo) -> None:
        pos = self._positions()
        pos[id(b)] = len(self.bindings)
        self.bindings.append(b)
        index = self._index
        if isinstance(index, TopicTrie):
            index.add(b.routing_key, b)
        elif index is not None:
            index.setdefault(b.routing_key, []).append(b)

    def remove_binding(self, b: BindingInfo) -> bool:
        """Remove ``b`` (found by identity in O(1), else by equality); False if absent.
        The last binding takes its place: routing does not depend on the order."""
        pos = self._positions()
        i = pos.pop(id(b), None)
        if i is None:
            try:
                i = self.bindings.index(b)
            except ValueError:
                return False
            pos.pop(id(self.bindings[i]), None)
        b = self.bindings[i]
        last = self.bindings.pop()
        if i < len(self.bindings):
            self.bindings[i] = last
            pos[id(last)] = i
        index = self._index
        if isinstance(index, TopicTrie):
            index.remove(b.routing_key, b)
        elif index is not None:
            same_key = index.get(b.routing_key)
            if same_key is not None:
                same_key.remove(b)
                if not same_key:
                    del index[b.routing_key]
        return True

    def _positions(self) -> dict[int, int]:
        """Where each binding object sits in ``bindings`` (rebuilt if appended to directly)."""
        pos = self._pos
        if pos is None or len(pos) != len(self.bindings):
            pos = self._pos = {id(x): i for i, x in enumerate(self.bindings)}
        return pos

    def matching(self, ex_type: str, routing_key: str, headers: Headers) -> list[BindingInfo]:
        """The bindings a message matches, looked up in an index for direct and topic
        exchanges (built on first use), so the cost does not grow with the bindings."""
        if ex_type == "fanout":
            return self.bindings
        if ex_type == "headers":
            return [b for b in self.bindings if headers_match(b.arguments, headers())]
        index = self._index
        if ex_type == "topic":
            if not isinstance(index, TopicTrie):
                index = self._index = TopicTrie()
                for b in self.bindings:
                    index.add(b.routing_key, b)
            return index.match(routing_key)
        if not isinstance(index, dict):
            index = self._index = {}
            for b in self.bindings:
                index.setdefault(b.routing_key, []).append(b)
        return index.get(routing_key, [])


@lru_cache(maxsize=4096)
def _topic_words(pattern: str) -> tuple[str, ...]:
    """Words of a key or pattern; the empty string has none (as on RabbitMQ)."""
    return tuple(pattern.split(".")) if pattern else ()


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic match: ``*`` is exactly one word, ``#`` zero or more words."""
    return _match(_topic_words(pattern), 0, _topic_words(routing_key), 0)


def _match(pat: tuple[str, ...], i: int, key: tuple[str, ...], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            if i == len(pat) - 1:
                return True
            return any(_match(pat, i + 1, key, k) for k in range(j, len(key) + 1))
        if j >= len(key):
            return False
        if word != "*" and word != key[j]:
            return False
        i += 1
        j += 1
    return j == len(key)


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """The headers exchange: ``x-match`` all (default) or any; ``x-`` keys are not matched."""
    headers = headers or {}
    mode = binding_args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode in ("any-with-x", "all-with-x")  # x- headers are matched too
    pairs = [
        (k, v)
        for k, v in binding_args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    ]
    if mode in ("any", "any-with-x"):
        return any(_header_equal(k, v, headers) for k, v in pairs)
    return all(_header_equal(k, v, headers) for k, v in pairs)


def _header_equal(key: str, expected: Any, headers: dict[str, Any]) -> bool:
    if key not in headers:
        return False
    if expected is None:
        return True  # a void value in the binding matches on presence alone
    actual = headers[key]
    if isinstance(actual, bytes) and isinstance(expected, str):
        actual = actual.decode(errors="replace")
    return bool(actual == expected)


def binding_matches(
    exchange_type: str, binding: BindingInfo, routing_key: str, headers: Headers
) -> bool:
    """Does ``binding`` on an exchange of ``exchange_type`` match this message?

    ``headers`` is called only for headers exchanges (decoding the table costs)."""
    if exchange_type == "fanout":
        return True
    if exchange_type == "topic":
        return topic_matches(binding.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(binding.arguments, headers())
    return binding.routing_key == routing_key


def routing_type(ex: ExchangeInfo) -> str:
    """How an exchange matches: its type, or ``x-delayed-type`` for a delayed exchange."""
    if ex.type == DELAYED_TYPE:
        return str(ex.arguments.get("x-delayed-type", "direct"))
    return ex.type


def route(
    exchanges: dict[int, ExchangeInfo],
    start: ExchangeInfo,
    routing_key: str | tuple[str, ...],
    headers: Headers,
    by_name: dict[str, ExchangeInfo] | None = None,
) -> set[int]:
    """Queue ids reached from ``start``, following exchange-to-exchange bindings once
    each; when nothing matches, the ``alternate-exchange`` chain (needs ``by_name``).
    Several routing keys (``CC``/``BCC``) route as one message: each queue once."""
    if not isinstance(routing_key, str):
        return _route_keys(exchanges, start, routing_key, headers, by_name)
    queues: set[int] = set()
    seen = {start.id}
    pending = [start]
    while pending:
        ex = pending.pop()
        for b in ex.matching(routing_type(ex), routing_key, headers):
            if b.queue_id is not None:
                queues.add(b.queue_id)
            elif b.exchange_id is not None and b.exchange_id not in seen:
                seen.add(b.exchange_id)
                dest = exchanges.get(b.exchange_id)
                if dest is not None:
                    pending.append(dest)
    if not queues and by_name is not None:
        alternate = start.arguments.get("alternate-exchange")
        ae = by_name.get(alternate) if isinstance(alternate, str) else None
        if ae is not None and ae.id not in seen:
            return route(exchanges, ae, routing_key, headers, _without(by_name, start.name))
    return queues


def _without(by_name: dict[str, ExchangeInfo], name: str) -> dict[str, ExchangeInfo]:
    """The name map minus one exchange: alternate-exchange cycles end."""
    return {k: v for k, v in by_name.items() if k != name}


def _route_keys(
    exchanges: dict[int, ExchangeInfo],
    start: ExchangeInfo,
    keys: tuple[str, ...],
    headers: Headers,
    by_name: dict[str, ExchangeInfo] | None,
) -> set[int]:
    """:func:`route` for several keys: the union, then the alternate exchange if empty."""
    queues: set[int] = set()
    for key in dict.fromkeys(keys):
        queues |= route(exchanges, start, key, headers)
    if not queues and by_name is not None:
        alternate = start.arguments.get("alternate-exchange")
        ae = by_name.get(alternate) if isinstance(alternate, str) else None
        if ae is not None and ae.id != start.id:
            return route(exchanges, ae, keys, headers, _without(by_name, start.name))
    return queues
