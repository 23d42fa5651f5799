"""The topic trie matches exactly what ``topic_matches`` matches, binding by binding."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cavalcade.domain.routing import BindingInfo, ExchangeInfo, TopicTrie, route, topic_matches

WORDS = ["a", "b", "c", "", "*", "#"]
patterns = st.lists(st.sampled_from(WORDS), max_size=5).map(".".join)
keys = st.lists(st.sampled_from(WORDS), max_size=6).map(".".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, max_size=12), st.lists(keys, min_size=1, max_size=8))
def test_trie_matches_what_topic_matches_matches(pats: list[str], ks: list[str]) -> None:
    trie = TopicTrie()
    for i, p in enumerate(pats):
        trie.add(p, i)
    for k in ks:
        got = trie.match(k)
        assert len(got) == len(set(got))  # each binding at most once
        assert set(got) == {i for i, p in enumerate(pats) if topic_matches(p, k)}


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=12), st.data())
def test_removal_leaves_exactly_the_others(pats: list[str], data: st.DataObject) -> None:
    trie = TopicTrie()
    for i, p in enumerate(pats):
        trie.add(p, i)
    gone = data.draw(st.sets(st.integers(0, len(pats) - 1)))
    for i in gone:
        assert trie.remove(pats[i], i)
        assert not trie.remove(pats[i], i)
    assert trie.size == len(pats) - len(gone)
    for k in data.draw(st.lists(keys, min_size=1, max_size=5)):
        want = {i for i, p in enumerate(pats) if i not in gone and topic_matches(p, k)}
        assert set(trie.match(k)) == want


def test_known_cases() -> None:
    trie = TopicTrie()
    for p in ["#", "a.#", "a.*", "*.b", "a.#.c", "#.#", "", "a..b"]:
        trie.add(p, p)
    assert sorted(trie.match("a.b")) == sorted(["#", "a.#", "a.*", "*.b", "#.#"])
    assert sorted(trie.match("")) == sorted(["#", "#.#", ""])
    assert sorted(trie.match("a.x.y.c")) == sorted(["#", "a.#", "a.#.c", "#.#"])
    assert "a..b" in trie.match("a..b")


def test_exchange_index_follows_binding_changes() -> None:
    ex = ExchangeInfo(id=1, name="t", type="topic")
    first = BindingInfo(1, "a.*", {}, queue_id=10)
    ex.add_binding(first)
    assert route({1: ex}, ex, "a.b", dict) == {10}  # builds the index
    ex.add_binding(BindingInfo(1, "#", {}, queue_id=11))
    assert route({1: ex}, ex, "a.b", dict) == {10, 11}
    assert ex.remove_binding(first)
    assert route({1: ex}, ex, "a.b", dict) == {11}
    direct = ExchangeInfo(id=2, name="d", type="direct")
    direct.add_binding(BindingInfo(2, "k", {}, queue_id=20))
    assert route({2: direct}, direct, "k", dict) == {20}
    direct.add_binding(BindingInfo(2, "k", {}, queue_id=21))
    assert direct.remove_binding(BindingInfo(2, "k", {}, queue_id=20))
    assert route({2: direct}, direct, "k", dict) == {21}
    assert route({2: direct}, direct, "other", dict) == set()


class _CountingTrie(TopicTrie):
    __slots__ = ("visits",)

    def __init__(self) -> None:
        super().__init__()
        self.visits = 0

    def _walk(self, *args):  # type: ignore[no-untyped-def]
        self.visits += 1
        return super()._walk(*args)


def test_cost_does_not_grow_with_the_binding_count() -> None:
    """Counted in trie nodes visited, not time: 10,000 bindings, one key."""
    trie = _CountingTrie()
    for i in range(10_000):
        trie.add(f"q{i}.#", i)
    assert trie.match("q42.x.y") == [42]
    assert trie.visits < 20
