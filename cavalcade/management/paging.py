"""RabbitMQ's list parameters: ``page``, ``page_size``, ``name`` (+ ``use_regex``),
``sort`` (+ ``sort_reverse``) and ``columns`` (dotted paths, e.g. ``message_stats.publish``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import bad_request

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


def _lookup(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))


def sort_items(
    items: list[dict[str, Any]], sort: str | None, reverse: bool, default: Sequence[str]
) -> list[dict[str, Any]]:
    keys = [sort] if sort else list(default)
    if not keys:
        return items
    return sorted(
        items, key=lambda i: tuple(_sort_key(_lookup(i, k)) for k in keys), reverse=reverse
    )


def select_columns(item: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in columns:
        parts = column.split(".")
        value = _lookup(item, column)
        if value is None and not _has(item, parts):
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _has(item: Mapping[str, Any], parts: Sequence[str]) -> bool:
    value: Any = item
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _positive(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} should be an integer, got {raw!r}") from None
    if value < 1:
        raise bad_request(f"{name} should be greater than 0")
    return value


def paginate(
    items: list[dict[str, Any]],
    query: Mapping[str, str],
    default_sort: Sequence[str] = ("vhost", "name"),
) -> Any:
    """A list as RabbitMQ answers it: the whole list, or one page of it with counts."""
    total = len(items)
    name = query.get("name")
    if name:
        if _flag(query, "use_regex"):
            try:
                pattern = re.compile(name)
            except re.error as exc:
                raise bad_request(f"invalid regex: {exc}") from None
            items = [i for i in items if pattern.search(str(i.get("name", "")))]
        else:
            needle = name.lower()
            items = [i for i in items if needle in str(i.get("name", "")).lower()]
    items = sort_items(items, query.get("sort"), _flag(query, "sort_reverse"), default_sort)
    columns = [c for c in query.get("columns", "").split(",") if c]
    if columns:
        items = [select_columns(i, columns) for i in items]
    if "page" not in query:
        return items
    page = _positive(query, "page", 1)
    size = _positive(query, "page_size", DEFAULT_PAGE_SIZE)
    if size > MAX_PAGE_SIZE:
        raise bad_request(f"Page size should be less than or equal to {MAX_PAGE_SIZE}")
    count = len(items)
    pages = max(1, math.ceil(count / size))
    if page > pages:
        raise bad_request("Page out of range")
    chunk = items[(page - 1) * size : page * size]
    return {
        "filtered_count": count,
        "item_count": len(chunk),
        "items": chunk,
        "page": page,
        "page_count": pages,
        "page_size": size,
        "total_count": total,
    }
