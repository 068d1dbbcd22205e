import pytest

from tests.support.tiny_model import build_tiny_model

# Under pytest-xdist (`make test`: --dist loadfile) each test module runs whole on one worker, in
# file order: its served stacks and browser start once, the tests that build on the one before
# (test_lifecycle, test_playground, test_events_route) keep their order, and the tests that kill or
# pause processes never share a module with each other's timing.
# The longest modules start first, so that none is left running alone at the end.
FIRST = ["tests/test_recipe.py", "tests/test_benchmarks.py", "tests/test_real_size_benchmark.py",
         "tests/server/test_embedded_valkey.py", "tests/server/test_worker_faults.py",
         "tests/server/test_hostile_requests.py", "tests/server/test_worker_plan.py"]


def pytest_collection_modifyitems(config, items):
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
