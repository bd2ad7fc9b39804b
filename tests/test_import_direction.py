"""Imports flow one way: the gateway may use the bridge's protocol helpers (``protocol``, ``client``, ``catalog``,
``clock``), its configuration toolkit (``settings``) and its error vocabulary (``errors``); the sandbox only
``protocol``, ``terminal_protocol`` (its kiosk signs as a terminal) and ``clock``; and nothing imports the gateway.
Checked on the source, so an import hidden inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED_FROM_BRIDGE = {
    "gateway": {
        "bridge.protocol",
        "bridge.client",
        "bridge.catalog",
        "bridge.clock",
        "bridge.settings",
        "bridge.errors",
    },
    "sandbox": {"bridge.protocol", "bridge.terminal_protocol", "bridge.clock"},
}


def imported(path: Path) -> set[str]:
    """Every module a file imports, by full name (``from bridge import clock`` is ``bridge.clock``; ``from
    bridge.client import BridgeClient`` is ``bridge.client``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("bridge", "adapters", "gateway", "sandbox"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["bridge", "adapters", "sandbox"])
def test_nothing_imports_the_gateway(package: str) -> None:
    offenders = [
        f"{p.relative_to(REPO)}: {n}" for p in sources(package) for n in imported(p) if n.split(".")[0] == "gateway"
    ]
    assert not offenders


@pytest.mark.parametrize("package", sorted(ALLOWED_FROM_BRIDGE))
def test_only_the_protocol_helpers_of_the_bridge_are_imported(package: str) -> None:
    allowed = ALLOWED_FROM_BRIDGE[package]
    offenders = []
    for path in sources(package):
        for name in imported(path):
            if name.split(".")[0] in ("bridge", "adapters") and name not in allowed:
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders


def test_the_protocol_helpers_are_leaves() -> None:
    for helper in ("protocol", "terminal_protocol", "clock", "settings", "errors"):
        ours = {
            n
            for n in imported(REPO / "bridge" / f"{helper}.py")
            if n.split(".")[0] in ("bridge", "adapters", "gateway")
        }
        assert ours <= {"bridge.clock", "bridge.protocol"} - {f"bridge.{helper}"}, (helper, ours)
