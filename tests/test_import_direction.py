"""Imports flow one way: the gateway may use the bridge's protocol helpers (``protocol``, ``client``, ``catalog``,
``clock``), its configuration toolkit (``settings``) and its error vocabulary (``errors``); the sandbox only
``protocol``, ``terminal_protocol`` (its kiosk signs as a terminal) and ``clock``; and nothing imports the gateway.
Inside the bridge and the gateway, modules import their own layer and the layers before it (README, "Imports flow
one way"); no import loops; no import of our own modules hidden inside a function. Checked on the source, so an
import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import functools
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
        "bridge.logs",
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
    for helper in ("protocol", "terminal_protocol", "clock", "settings", "errors", "logs", "group_commit"):
        ours = {
            n
            for n in imported(REPO / "bridge" / f"{helper}.py")
            if n.split(".")[0] in ("bridge", "adapters", "gateway")
        }
        assert ours <= {"bridge.clock", "bridge.protocol"} - {f"bridge.{helper}"}, (helper, ours)


# --- The module graph: every import of our own modules, at the top or inside a function. ---------------------------

OURS = ("bridge", "adapters", "gateway", "sandbox")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in OURS for p in sources(package)}


def _target(name: str) -> str | None:
    """The module an imported name lives in (``gateway.store.tables.orders`` is ``gateway.store.tables``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for each import of one of our modules, relative ones included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{alias.name}" for alias in child.names]
            for name in names:
                target = _target(name) if name.split(".")[0] in OURS else None
                if target is not None and target != module:
                    found.append((target, child.lineno, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return found


GRAPH = {m: {target for target, _, _ in imports_of(m)} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a loop of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_ours_imports_itself_round_a_loop() -> None:
    assert cycles(GRAPH) == []


FUNCTION_LEVEL_ALLOWED: dict[str, str] = {}
"""``module -> why``: a function-level import of our own modules, allowed only with its reason (an optional heavy
dependency, say). None is needed today; a loop is never a reason."""


def test_no_import_of_our_modules_hides_inside_a_function() -> None:
    hidden = [
        f"{MODULES[m].relative_to(REPO)}:{line}: {target}"
        for m in sorted(MODULES)
        for target, line, inside in imports_of(m)
        if inside and m not in FUNCTION_LEVEL_ALLOWED
    ]
    assert not hidden


# --- The layers README states ("Imports flow one way"). A module may import its own layer and those before it. ------

LAYERS = {
    "bridge": [
        # leaves: the wire protocol, the clock, the catalog, TLS, logging
        [
            "bridge.clock",
            "bridge.protocol",
            "bridge.terminal_protocol",
            "bridge.catalog",
            "bridge.tls",
            "bridge.logs",
            "bridge.errors",
            "bridge.settings",
            "bridge.group_commit",
            "bridge.version",
            "bridge.client",
            "bridge.systemd",
        ],
        # the parts: config, journal, metrics, the terminals' side, the agent's wiring
        [
            "bridge.config",
            "bridge.journal",
            "bridge.journal_admin",
            "bridge.breaker",
            "bridge.metrics",
            "bridge.egress",
            "bridge.intranet",
            "bridge.openapi",
            "bridge.certs",
            "bridge.init",
            "bridge.wiring",
        ],
        ["bridge.dispatcher", "bridge.agent"],
        ["bridge.api", "bridge.ops_api", "bridge.reload"],
        ["bridge.server"],
        ["bridge.cli", "bridge.doctor"],
    ],
    "gateway": [
        # the vocabulary: domain types, config, and the channel clients (they speak each channel's protocol and
        # keep nothing themselves)
        [
            "gateway.model",
            "gateway.config",
            "gateway.client",
            "gateway.sms.config",
            "gateway.sms.phones",
            "gateway.channels",
        ],
        ["gateway.store"],
        [
            "gateway.channels.build",
            "gateway.channels.cli",
            "gateway.his",
            "gateway.his_reads",
            "gateway.tenants.snapshot",
            "gateway.money_metrics",
            "gateway.platform_metrics",
            "gateway.notify_guard",
        ],
        ["gateway.services", "gateway.channel_trust", "gateway.tenants", "gateway.representations"],
        ["gateway.sagas", "gateway.recon", "gateway.notify_delivery", "gateway.workers", "gateway.retention"],
        ["gateway.api", "gateway.console", "gateway.sms"],
        ["gateway.runtime", "gateway.cli", "gateway.audit_cli", "gateway.migrations"],
    ],
}


def layer_of(module: str) -> int | None:
    """The layer of the longest prefix naming it (``gateway.channels.factory`` before ``gateway.channels``)."""
    best: tuple[int, int] | None = None
    for layers in LAYERS.values():
        for rank, names in enumerate(layers):
            for name in names:
                if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                    best = (len(name), rank)
    return None if best is None else best[1]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_module_has_a_layer(package: str) -> None:
    unplaced = [m for m in MODULES if m.split(".")[0] == package and "." in m and layer_of(m) is None]
    assert not unplaced


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_flow_down_the_layers(package: str) -> None:
    upward = [
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m in sorted(MODULES)
        if m.split(".")[0] == package
        for t in GRAPH[m]
        if t.split(".")[0] == package and "." in t and (layer_of(t) or 0) > (layer_of(m) or 0)
    ]
    assert not upward
