"""The protocol layer reaches the broker through broker/api.py only, never storage."""

from __future__ import annotations

import ast
from pathlib import Path

import cavalcade.protocol

PROTOCOL = Path(cavalcade.protocol.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_protocol_imports_only_the_broker_port() -> None:
    for path in sorted(PROTOCOL.glob("*.py")):
        for name in _imports(path):
            if name.startswith("cavalcade.broker"):
                assert name == "cavalcade.broker.api", f"{path.name} imports {name}"
            assert not name.startswith("cavalcade.storage"), f"{path.name} imports {name}"
