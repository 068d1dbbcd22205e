"""`paris status|list|cancel|delete|download|events`: manage jobs on a server. Results go to stdout
(one readable line per job or event, or the server's JSON with --json); errors are one line on
stderr with the exit codes of client/exits.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from .api import DEFAULT_SERVER, ParisClient
from .exits import JOB_FAILED, OK, run_reporting

VARIANT_SUFFIX = {"video": ".mp4", "thumbnail": ".png", "spritesheet": ".png"}


def add_server_arguments(p, json_help: str = "print the server's JSON") -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"server URL (default {DEFAULT_SERVER}; env PARIS_SERVER)")
    p.add_argument("--api-key", help="API key (env PARIS_API_KEY)")
    p.add_argument("--json", action="store_true", help=json_help)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def shares(video: dict) -> str:
    """'expert 0 60%, expert 2 40%': the share of denoising steps each expert ran."""
    step_share = (video.get("routing") or {}).get("step_share") or {}
    return ", ".join(f"expert {k} {v:.0%}" for k, v in step_share.items() if v)


def summary(video: dict) -> str:
    """One line: id, status and what the job is."""
    status = video["status"]
    if status == "queued" and video.get("queue_position") is not None:
        status += f" (position {video['queue_position']})"
    elif status == "in_progress" and video.get("step") is not None:
        status += f" (step {video['step']}/{video.get('num_inference_steps')}, {video.get('progress')}%)"
    elif status == "failed" and video.get("error"):
        status += f" ({video['error'].get('code')}: {video['error'].get('message')})"
    parts = [f"seed {video.get('seed')}", video.get("size"), f"{video.get('num_frames')} frames"]
    if video.get("routing"):
        parts.append(f"routing {shares(video)}")
    prompt = video.get("prompt") or ""
    return f"{video['id']}  {status}  {', '.join(p for p in parts if p)}  {json.dumps(prompt)}"


def _client(args) -> ParisClient:
    return ParisClient(args.server, api_key=args.api_key)


def cmd_status(args) -> int:
    def run() -> int:
        with _client(args) as client:
            video = client.retrieve(args.id)
        print_json(video) if args.json else print(summary(video))
        return JOB_FAILED if video["status"] == "failed" else OK
    return run_reporting("status", args.server, run)


def cmd_list(args) -> int:
    def run() -> int:
        with _client(args) as client:
            page = client.list(limit=args.limit, after=args.after, order=args.order)
        if args.json:
            print_json(page)
        else:
            for video in page["data"]:
                print(summary(video))
            if page.get("has_more"):
                print(f"more: paris list --after {page['last_id']}", file=sys.stderr)
        return OK
    return run_reporting("list", args.server, run)


def _change(args, command: str, call: Callable[[ParisClient], dict], line: Callable[[dict], str]) -> int:
    """One change to a video (cancel, delete): the server's reply as JSON with --json, else one line."""
    def run() -> int:
        with _client(args) as client:
            reply = call(client)
        print_json(reply) if args.json else print(line(reply))
        return OK
    return run_reporting(command, args.server, run)


def cmd_cancel(args) -> int:
    return _change(args, "cancel", lambda client: client.cancel(args.id), summary)


def cmd_delete(args) -> int:
    return _change(args, "delete", lambda client: client.delete(args.id), lambda deleted: f"{deleted['id']}  deleted")


def cmd_download(args) -> int:
    def run() -> int:
        out = args.out or Path(args.id + VARIANT_SUFFIX[args.variant])
        with _client(args) as client:
            path = client.download(args.id, out, variant=args.variant)
        size = path.stat().st_size
        if args.json:
            print_json({"id": args.id, "variant": args.variant, "path": str(path), "bytes": size})
        else:
            print(f"{path}  ({size} bytes, {args.variant} of {args.id})")
        return OK
    return run_reporting("download", args.server, run)


def describe_event(event) -> str:
    d = event.data
    if event.event == "queued":
        return f"queued (position {d.get('position')})" if d.get("position") is not None else "queued"
    if event.event == "progress":
        return f"progress {d.get('progress')}% (step {d.get('step')}/{d.get('total')}, experts {d.get('experts')})"
    if event.event == "failed":
        return f"failed: {d.get('code')}: {d.get('message')}"
    if event.event == "completed":
        return "completed"
    return f"{event.event} {json.dumps(d)}" if d else event.event


def cmd_events(args) -> int:
    def run() -> int:
        last = None
        with _client(args) as client:
            for event in client.events(args.id, last_event_id=args.last_event_id):
                last = event
                print(json.dumps(event.to_json()) if args.json else f"{event.id or '-'}  {describe_event(event)}",
                      flush=True)
        return JOB_FAILED if last is not None and last.event == "failed" else OK
    return run_reporting("events", args.server, run)


def register(subparsers) -> None:
    for name, run, help in (("status", cmd_status, "show one job (exit 1 if it failed)"),
                            ("cancel", cmd_cancel, "cancel a queued or running job"),
                            ("delete", cmd_delete, "delete a job and its files")):
        p = subparsers.add_parser(name, help=help)
        p.add_argument("id", help="video id (video_...)")
        add_server_arguments(p)
        p.set_defaults(run=run)

    p = subparsers.add_parser("list", help="list your jobs, newest first")
    p.add_argument("--limit", type=int, help="at most this many (server default 20)")
    p.add_argument("--after", help="the page after this video id")
    p.add_argument("--order", choices=["asc", "desc"], default="desc")
    add_server_arguments(p)
    p.set_defaults(run=cmd_list)

    p = subparsers.add_parser("download", help="download a finished job's MP4 (or its thumbnail or spritesheet)")
    p.add_argument("id", help="video id")
    p.add_argument("--out", type=Path, help="output path (default ID.mp4, or ID.png for the PNG variants)")
    p.add_argument("--variant", choices=list(VARIANT_SUFFIX), default="video")
    add_server_arguments(p, json_help="print what was written as JSON")
    p.set_defaults(run=cmd_download)

    p = subparsers.add_parser("events", help="follow a job's events until it ends (exit 1 if it failed)")
    p.add_argument("id", help="video id")
    p.add_argument("--last-event-id", help="start after this event (as a reconnecting client does)")
    add_server_arguments(p, json_help="one JSON object per event: id, event, data")
    p.set_defaults(run=cmd_events)
