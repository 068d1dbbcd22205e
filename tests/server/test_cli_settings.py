"""`paris serve` hands the worker settings to its worker subprocesses (one per device); settings
are checked at start (a clear one-line message and a non-zero exit); API keys from a file."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from client.cli import build_parser
from server.process.cli import _worker_argv, settings_from_args, worker_devices

from .harness import REPO


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


@pytest.mark.parametrize("argv,field", [
    (["--lease-ms", "0"], "lease_ms"), (["--port", "70000"], "port"), (["--max-active-jobs-per-key", "-1"],
     "max_active_jobs_per_key"), (["--max-batch", "0"], "max_batch"), (["--max-attempts", "0"], "max_attempts"),
    (["--job-ttl", "-5"], "job_ttl_s"), (["--artifact-url", "http://bucket"], "artifact_url"),
    (["--api-key-file", "/no/such/file"], "api_key_file")])
def test_nonsense_settings_are_refused_with_a_clear_message(tiny_model_dir, argv, field):
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), *argv])
    with pytest.raises(SystemExit) as exc:
        settings_from_args(args)
    message = str(exc.value)
    assert message.startswith("paris serve: invalid settings:") and field in message, message
    assert "\n" not in message and "pydantic" not in message


def test_invalid_environment_setting_exits_non_zero(tiny_model_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "client.cli", "worker", "--model", str(tiny_model_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PARIS_LEASE_MS": "0"})
    assert p.returncode != 0 and "lease_ms (PARIS_LEASE_MS)" in p.stderr, p.stderr[-2000:]


def test_workers_and_devices(tiny_model_dir):
    def devices(*argv):
        args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), *argv])
        return worker_devices(settings_from_args(args)), args

    assert devices()[0] == ["cpu"]
    assert devices("--workers", "3")[0] == ["cpu", "cpu", "cpu"]  # on CPU, N workers share it
    assert devices("--devices", "cuda:0,cuda:1")[0] == ["cuda:0", "cuda:1"]
    assert devices("--workers", "4", "--devices", "cuda:0,cuda:1")[0] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    chosen, args = devices("--devices", "cuda:0,cuda:1")
    argv = _worker_argv(args, settings_from_args(args), chosen[1])
    assert argv[argv.index("--device") + 1] == "cuda:1"
    assert "--redis-url" not in argv  # the URL (maybe with a password) travels in the environment


def test_api_keys_from_a_file(make_stack, tmp_path, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nkey-from-file-1\n\n  key-from-file-2  \n")
    key_file.chmod(0o600)
    s = make_stack(api_key_file=str(key_file))
    s.start_api()
    for key in ("key-from-file-1", "key-from-file-2"):
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer # operators"}).status_code == 401
    assert httpx.get(s.url + "/v1/models").status_code == 401
    assert "key-from-file" not in Path(f"/proc/{s.api.pid}/cmdline").read_text()
    # --api-key still works, with a warning that it shows in ps
    args = build_parser().parse_args(["api", "--model", str(s.model), "--api-key", "k"])
    with caplog.at_level("WARNING"):
        assert settings_from_args(args).plain_api_keys() == ["k"]
    assert "api_key_on_command_line" in caplog.text


@pytest.mark.parametrize("env,field", [
    ({"PARIS_API_KEY_HASHES": "nothex"}, "api_key_hashes"),
    ({"PARIS_API_KEY_HASHES": "ab" * 31}, "api_key_hashes"),  # 62 digits: a digest cut short
    ({"PARIS_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies"),
    ({"PARIS_WEBHOOK_ALLOWED_NETWORKS": "intranet"}, "webhook_allowed_networks"),
    ({"PARIS_WEBHOOK_SECRET": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
      "PARIS_WEBHOOK_KEY_SECRETS": "ab" * 32 + "=not-a-secret"}, "webhook_key_secrets")])
def test_key_hashes_and_networks_are_checked_when_the_api_starts(tiny_model_dir, tmp_path, env, field):
    """Issue 19, N10: `paris api` refuses them at start, in one line, without echoing a secret."""
    p = subprocess.run([sys.executable, "-m", "client.cli", "api", "--model", str(tiny_model_dir), "--data-dir",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert p.returncode != 0 and f"{field} (PARIS_{field.upper()})" in p.stderr, p.stderr[-2000:]
    assert "not-a-secret" not in p.stderr and "Traceback" not in p.stderr


def test_serve_passes_its_workers_only_the_settings_they_read():
    from server.process.cli import worker_environment

    env = worker_environment({"PARIS_API_KEYS": "k", "PARIS_WEBHOOK_SECRET": "whsec_x", "PARIS_API_KEY_FILE": "/k",
                              "PARIS_TRUSTED_PROXIES": "10.0.0.0/8", "PARIS_MAX_BATCH": "4", "PARIS_LEASE_MS": "9000",
                              "PARIS_KEY_PREFIX": "p", "AWS_ACCESS_KEY_ID": "s3", "PATH": "/bin"})
    assert env == {"PARIS_MAX_BATCH": "4", "PARIS_LEASE_MS": "9000", "PARIS_KEY_PREFIX": "p",
                   "AWS_ACCESS_KEY_ID": "s3", "PATH": "/bin"}
