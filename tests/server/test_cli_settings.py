"""`paris serve` hands the worker settings to its worker subprocess."""

import pytest

from client.cli import build_parser
from server.cli import _worker_argv, settings_from_args


def test_serve_forwards_engine_settings_to_its_worker(tiny_model_dir):
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), "--device-memory", "2GiB",
                                      "--max-wait", "5", "--threads", "1", "--max-batch", "4"])
    argv = _worker_argv(args, settings_from_args(args), "cpu")
    pairs = dict(zip(argv[4::2], argv[5::2]))  # after: python -m client.cli worker
    assert pairs["--device-memory"] == "2GiB" and pairs["--max-wait"] == "5"
    assert pairs["--threads"] == "1" and pairs["--max-batch"] == "4"


def test_serve_leaves_unset_engine_settings_to_the_worker_defaults(tiny_model_dir):
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir)])
    argv = _worker_argv(args, settings_from_args(args), "cpu")
    assert "--device-memory" not in argv and "--threads" not in argv


def test_malformed_device_memory_is_refused(tiny_model_dir):
    args = build_parser().parse_args(["worker", "--model", str(tiny_model_dir), "--device-memory", "lots"])
    with pytest.raises(SystemExit, match="device memory"):
        settings_from_args(args)
