"""x-death headers spliced into raw properties, everything else byte-exact."""

from __future__ import annotations

import datetime

from pamqp import commands, decode

from cavalcade.domain.deadletter import dead_letter_properties, table_entries
from cavalcade.domain.properties import parse_properties


def _raw(**kw: object) -> bytes:
    return commands.Basic.Properties(**kw).marshal()  # type: ignore[arg-type]


NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def test_first_death_adds_x_death_and_drops_expiration() -> None:
    raw = _raw(content_type="text/plain", headers={"keep": 1.5}, expiration="5000", priority=3)
    out = dead_letter_properties(
        raw, queue="q", reason="expired", exchange="ex", routing_keys=["rk"], now=NOW
    )
    p = parse_properties(out)
    assert p.expiration is None and p.content_type == "text/plain" and p.priority == 3
    h = p.headers()
    assert h["keep"] == 1.5  # a double survives as a double (pamqp would write a float)
    (death,) = h["x-death"]
    assert death["count"] == 1 and death["reason"] == "expired" and death["queue"] == "q"
    assert death["exchange"] == "ex" and death["routing-keys"] == ["rk"]
    assert death["original-expiration"] == "5000"
    assert death["time"] == NOW.replace(tzinfo=None) or death["time"] == NOW
    assert h["x-first-death-reason"] == "expired" and h["x-first-death-queue"] == "q"
    assert h["x-first-death-exchange"] == "ex"


def test_second_death_in_same_queue_counts_up() -> None:
    raw = _raw(headers={"a": "b"})
    once = dead_letter_properties(
        raw, queue="q", reason="rejected", exchange="", routing_keys=["q"]
    )
    twice = dead_letter_properties(
        once, queue="q", reason="rejected", exchange="", routing_keys=["q"]
    )
    h = parse_properties(twice).headers()
    assert len(h["x-death"]) == 1 and h["x-death"][0]["count"] == 2
    other = dead_letter_properties(twice, queue="q2", reason="maxlen", exchange="", routing_keys=[])
    deaths = parse_properties(other).headers()["x-death"]
    assert [d["queue"] for d in deaths] == ["q2", "q"]
    assert parse_properties(other).headers()["x-first-death-queue"] == "q"


def test_untouched_entries_are_copied_byte_for_byte() -> None:
    raw = _raw(headers={"f": 1.25, "n": None, "big": 2**40})
    out = dead_letter_properties(raw, queue="q", reason="rejected", exchange="", routing_keys=[])
    before = dict(table_entries(parse_properties(raw).headers_raw or b""))
    after = dict(table_entries(parse_properties(out).headers_raw or b""))
    for key in ("f", "n", "big"):
        assert after[key] == before[key]
    assert decode.field_table(parse_properties(out).headers_raw or b"")[1]["big"] == 2**40


def test_no_headers_at_all() -> None:
    out = dead_letter_properties(
        b"\x00\x00", queue="q", reason="rejected", exchange="", routing_keys=["k"]
    )
    assert parse_properties(out).headers()["x-death"][0]["routing-keys"] == ["k"]
