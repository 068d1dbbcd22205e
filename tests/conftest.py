import pytest

from tests.support.tiny_model import build_tiny_model

# Modules of independent, CPU-heavy, in-process tests: under pytest-xdist (`make test`) their tests
# are dealt out one by one (those sharing a module-scoped fixture stay together). Every other
# module runs whole on one worker, in file order: its served stacks and browser start once, the
# tests that build on the one before (test_playground) keep their order, the tests that kill or
# pause processes never share a worker with each other's timing, and the benchmark scripts
# (subprocesses with a 300 s timeout, several threads each) run one at a time per module.
SPREAD = {"tests/test_recipe.py", "tests/pipeline/test_engine.py", "tests/pipeline/test_memory_limits.py",
          "tests/test_paris_mini.py"}
# The longest modules start first, so that none is left running alone at the end.
FIRST = ["tests/test_recipe.py", "tests/test_benchmarks.py", "tests/test_real_size_benchmark.py",
         "tests/server/test_embedded_valkey.py", "tests/server/test_worker_faults.py",
         "tests/server/test_hostile_requests.py", "tests/server/test_worker_plan.py"]


def _module_fixtures(item) -> list[str]:
    defs = getattr(item, "_fixtureinfo", None)
    if defs is None:
        return []
    return sorted(name for name, fixturedefs in defs.name2fixturedefs.items()
                  if fixturedefs and fixturedefs[-1].scope in ("module", "class", "package"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Groups for `pytest -n N --dist loadgroup` (harmless without xdist); see SPREAD above."""
    for item in items:
        module = item.nodeid.split("::")[0]
        if item.get_closest_marker("xdist_group"):
            continue
        if module not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(module))
        elif shared := _module_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(f"{module}[{','.join(shared)}]"))
    rank = {m: i for i, m in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(FIRST)))  # stable: file order within


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight model folder of the real component classes (32x32, 9 frames, 3 experts)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from pipeline.loader import load_model

    return load_model(tiny_model_dir)
