"""`paris submit` and the job commands (`status`, `list`, `cancel`, `delete`, `download`, `events`)
against a real API, worker and Valkey: results on stdout (readable, or the server's JSON with
--json), progress on stderr, each failure one line on stderr with its own exit code
(client/exits.py), and no torch imported on the way."""

import json
import re

import httpx
import pytest
from PIL import Image

from client import exits
from tests.support.paris_cli import paris
from weights.recipe.detector import read_mp4

from .harness import free_port

KEY = "jobs-cli-key"


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(api_keys=[KEY])
    s.start_api()
    s.start_worker("w1")
    return s


@pytest.fixture(scope="module")
def server(stack) -> str:
    return stack.url


@pytest.fixture(scope="module")
def slow_stack(make_module_stack):
    """A worker that sleeps after each step: its jobs stay running long enough to cancel."""
    s = make_module_stack(api_keys=[KEY])
    s.start_api()
    s.start_worker("slow", tick_delay_s=0.2)
    return s


@pytest.fixture(scope="module")
def slow_server(slow_stack) -> str:
    return slow_stack.url


def cli(url, *argv, key=KEY, **kw):
    env = {"PARIS_API_KEY": key} if key else {"PARIS_API_KEY": ""}
    return paris(*argv, "--server", url, env=env, **kw)


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_submit_then_each_job_command(server, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(server, "submit", "a red circle moving left", "--steps", "3", "--seed", "8772104593415965125",
            "--frames", "9", "--guidance", "2.0", "--out", str(out), watch_imports=tmp_path / "imports.json")
    assert r.returncode == 0, r.stderr
    assert r.heavy == []
    # stdout: what was made, routing readable (not a dict); stderr: the job and its progress
    lines = r.stdout.splitlines()
    assert lines[0] == f"wrote {out} (9 frames, 32x32, 8 fps, seed 8772104593415965125)"
    assert lines[1].startswith("routing: expert ") and "{" not in lines[1] and "%" in lines[1]
    assert "queued" in r.stderr and "step" in r.stderr and "wrote" not in r.stderr
    frames, _ = read_mp4(out)
    assert frames.shape == (9, 32, 32, 3)
    video_id = r.stderr.split(":")[0]
    assert video_id.startswith("video_")

    status = cli(server, "status", video_id, "--json")
    assert status.returncode == 0 and status.stderr == ""
    video = json.loads(status.stdout)
    assert video["id"] == video_id and video["status"] == "completed" and video["seed"] == 8772104593415965125
    readable = cli(server, "status", video_id)
    assert readable.stdout.startswith(f"{video_id}  completed  seed 8772104593415965125, 32x32, 9 frames")

    listed = cli(server, "list", "--json", "--limit", "5")
    assert listed.returncode == 0 and video_id in [v["id"] for v in json.loads(listed.stdout)["data"]]
    assert video_id in cli(server, "list").stdout

    events = cli(server, "events", video_id, "--json")
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["event"] for line in events.stdout.splitlines()]
    # connected after the job ended: the whole log. `queued` is in it only when the job still
    # waited as its event was written (the write is guarded by the status; a worker may be faster).
    assert kinds in (["queued", "progress", "progress", "progress", "completed"],
                     ["progress", "progress", "progress", "completed"]), kinds

    copy = tmp_path / "copy.mp4"
    got = cli(server, "download", video_id, "--out", str(copy), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"id": video_id, "variant": "video", "path": str(copy),
                                      "bytes": copy.stat().st_size}
    assert copy.read_bytes() == out.read_bytes()
    thumb = cli(server, "download", video_id, "--variant", "thumbnail", "--out", str(tmp_path / "t.png"))
    assert thumb.returncode == 0 and Image.open(tmp_path / "t.png").size == (32, 32)

    conflict = cli(server, "cancel", video_id)  # already finished
    assert conflict.returncode == exits.CONFLICT
    assert one_line_error(conflict).startswith("paris cancel: 409 ")

    deleted = cli(server, "delete", video_id, "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True
    gone = cli(server, "status", video_id)
    assert gone.returncode == exits.NOT_FOUND and gone.stdout == ""
    assert one_line_error(gone).startswith("paris status: 404 ")


def test_cancel_a_running_job(slow_server, tmp_path):
    r = cli(slow_server, "submit", "a blue square moving up", "--steps", "40", "--no-wait")
    assert r.returncode == 0, r.stderr
    video_id = r.stdout.strip()
    assert video_id.startswith("video_")
    cancelled = cli(slow_server, "cancel", video_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    video = json.loads(cancelled.stdout)
    assert video["status"] == "failed" and video["error"]["code"] == "cancelled"
    followed = cli(slow_server, "events", video_id)  # its events end with the failure: exit 1
    assert followed.returncode == exits.JOB_FAILED
    assert followed.stdout.splitlines()[-1].endswith("failed: cancelled: The job was cancelled.")
    status = cli(slow_server, "status", video_id)
    assert status.returncode == exits.JOB_FAILED and "cancelled" in status.stdout


@pytest.mark.parametrize("argv", [["submit", "x", "--out", "never.mp4"], ["status", "video_x"], ["list"],
                                  ["cancel", "video_x"], ["delete", "video_x"], ["download", "video_x"],
                                  ["events", "video_x"]], ids=lambda a: a[0])
def test_server_down_is_one_line(argv, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    r = cli(down, *argv)
    assert r.returncode == exits.UNREACHABLE
    assert one_line_error(r) == (f"paris {argv[0]}: cannot reach the server at {down} ([Errno 111] Connection "
                                 "refused); is `paris serve` running there? (--server or PARIS_SERVER)")


def test_errors_name_the_problem(server, tmp_path):
    wrong = cli(server, "list", key="not-the-key")
    assert wrong.returncode == exits.AUTH
    assert one_line_error(wrong).startswith("paris list: 401 ")
    assert one_line_error(wrong).endswith("(pass --api-key or set PARIS_API_KEY)")
    none = cli(server, "status", "video_x", key=None)
    assert none.returncode == exits.AUTH

    bad = cli(server, "submit", "x", "--size", "7x7", "--out", str(tmp_path / "never.mp4"))
    assert bad.returncode == exits.INVALID
    assert one_line_error(bad).startswith("paris submit: 400 invalid_value: size: ")
    assert not (tmp_path / "never.mp4").exists()

    missing = cli(server, "download", "video_doesnotexist", "--out", str(tmp_path / "never.mp4"))
    assert missing.returncode == exits.NOT_FOUND
    assert one_line_error(missing).startswith("paris download: 404 ")
    assert not (tmp_path / "never.mp4").exists()

    flags = paris("submit", "x", "--schedule", "0,a")
    assert flags.returncode == exits.USAGE and "--schedule" in one_line_error(flags)


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) paris\.[a-z_.]+ \{.*\}$")


def test_server_logs_hold_structured_lines_only(stack, slow_stack, slow_server):
    """No library notice (transformers' torchvision warning), no traceback, and a client that
    drops an event stream mid-job leaves at most one structured line (issue 17: 13 lines of
    `socket.send() raised exception`)."""
    video_id = cli(slow_server, "submit", "a green circle shrinking", "--steps", "30", "--no-wait").stdout.strip()
    with httpx.stream("GET", f"{slow_server}/v1/videos/{video_id}/events", timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        for line in response.iter_lines():
            if line.startswith("event: progress"):
                break  # drop the connection while the job runs
    assert cli(slow_server, "events", video_id).returncode == 0  # the job went on, and ended well
    for s in (stack, slow_stack):
        for proc in [s.api, *s.workers]:
            odd = [line for line in proc.log.read_text().splitlines() if not LOG_LINE.match(line)]
            assert odd == [], f"{proc.log.name}: {odd[:5]}"
