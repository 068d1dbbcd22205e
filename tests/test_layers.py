"""The rooms of server/ and the arrows allowed between them, read from the source with `ast`
(every import counts: at the top, inside a function, or under TYPE_CHECKING).

    api      the HTTP app: routes, bodies, intake, auth, tenants, the /metrics scrape
    queue    the job vocabulary, the store and its Lua, the guard, the metric writers
    worker   the engine loop and worker groups
    notify   event logs and webhooks
    storage  artifacts (local directory or S3)
    process  the commands, settings, embedded Valkey, child processes
    errors   the error envelope and error types, shared by every room

The pipeline's own rule (it imports nothing built on it) is tests/pipeline/test_imports.py."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"api", "queue", "worker", "notify", "storage", "process"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


KNOWN = {**modules("server"), **modules("pipeline")}


def imports(name: str) -> set[str]:
    """The modules of server/ and pipeline/ that module `name` imports (`from a import b` counts
    as importing a.b when b is a module)."""
    path = KNOWN[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in KNOWN:  # `import a.b.c`: the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports(name) for name in KNOWN}


def reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "server" and len(parts) > 1 and parts[1] in ROOMS else None


def in_room(r: str) -> list[str]:
    return [m for m in KNOWN if room(m) == r]


def test_every_server_module_is_in_a_room():
    loose = [m for m in KNOWN if m.startswith("server.") and room(m) is None]
    assert loose == ["server.errors"]  # the one shared module
    assert all(in_room(r) for r in ROOMS)


def direct_offenders(src_room: str, banned) -> dict[str, list[str]]:
    out = {m: sorted(t for t in GRAPH[m] if banned(t)) for m in in_room(src_room)}
    return {m: t for m, t in out.items() if t}


def test_api_never_reaches_the_worker_or_the_engine():
    # transitively: nothing the API imports, in server/ or pipeline/, brings the engine in
    bad = {m: sorted(t for t in reach(m) if room(t) == "worker" or t == "pipeline.engine"
                     or t.startswith("pipeline.engine.")) for m in in_room("api")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_queue_never_reaches_the_api_or_the_worker():
    bad = {m: sorted(t for t in reach(m) if room(t) in {"api", "worker"}) for m in in_room("queue")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_storage_and_notify_never_import_the_api_or_the_worker():
    for r in ("storage", "notify"):
        assert direct_offenders(r, lambda t: room(t) in {"api", "worker"}) == {}, r


def test_only_the_commands_start_a_worker():
    importers = sorted(m for m in KNOWN if room(m) != "worker" and any(room(t) == "worker" for t in GRAPH[m]))
    assert importers and all(room(m) == "process" for m in importers), importers


def test_the_shared_errors_module_imports_no_room():
    assert [t for t in GRAPH["server.errors"] if room(t)] == []


def cycles(names: list[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A submodule importing
    its own package (`from . import X` in server/storage/local.py) is the package's interface,
    loaded before the submodule anyway: not an arrow."""
    edges = {m: {t for t in GRAPH[m] if t in names and not m.startswith(t + ".")} for m in names}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in names:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_server():
    names = [m for m in KNOWN if m.startswith("server")]
    assert len(names) > 40
    assert cycles(names) == []


def test_the_cycle_finder_finds_a_cycle():
    # the check above can fail: a made-up arrow back from the queue to the API is a cycle
    saved = GRAPH["server.queue.jobs"]
    try:
        GRAPH["server.queue.jobs"] = saved | {"server.api.schemas"}
        assert ["server.api.schemas", "server.queue.jobs"] in cycles([m for m in KNOWN if m.startswith("server")])
        assert "server.api.schemas" in reach("server.queue.store")
    finally:
        GRAPH["server.queue.jobs"] = saved
