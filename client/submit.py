"""`paris submit "PROMPT" [--image FIRST.png] [--server URL] [--out OUT.mp4]`: create a job, show
its queue position and denoising progress while it waits (stderr), download the MP4 and say what
was made (stdout). The request flags are `paris generate`'s (pipeline.cli.add_request_arguments)."""

from __future__ import annotations

import sys

from pipeline.cli import add_request_arguments, request_values
from pipeline.request import REQUEST_FIELDS

from .api import ParisClient
from .exits import JOB_FAILED, OK, USAGE, run_reporting
from .jobs import add_server_arguments, print_json, shares, summary


def form_params(args) -> dict:
    """The API's form fields for the flags (None: the server's default): the request's fields, as
    `paris generate` reads them, less the prompt and the first frame (sent apart), and the API's own.
    ValueError, naming the flag, for a list that does not parse."""
    apart = {"prompt"} | {f.name for f in REQUEST_FIELDS if f.file}  # ParisClient.create's own arguments
    fields = {name: value for name, value in request_values(args).items() if name not in apart}
    return {**fields, "seconds": args.seconds, "model": args.model}


class Progress:
    """The job's state on stderr: a tqdm bar on a terminal, a line per change otherwise (logs)."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit="%", desc="queued", file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())
        self.last = ""

    def update(self, video: dict) -> None:
        if video["status"] == "queued":
            text = f"queued (position {video.get('queue_position')})"
        else:
            text = f"{video['status']} step {video.get('step') or 0}/{video.get('num_inference_steps') or 0}"
        self.bar.set_description(text)
        self.bar.n = int(video.get("progress") or 0)
        self.bar.refresh()
        if self.bar.disable and text != self.last:
            print(f"{video['id']}: {text}", file=sys.stderr)
        self.last = text

    def close(self) -> None:
        self.bar.close()


def cmd_submit(args) -> int:
    try:
        params = form_params(args)
    except ValueError as exc:
        print(f"paris submit: {exc}", file=sys.stderr)
        return USAGE

    def run() -> int:
        with ParisClient(args.server, api_key=args.api_key) as client:
            video = client.create(args.prompt, image=args.image, **params)
            if args.no_wait:
                print_json(video) if args.json else print(video["id"])
                return OK
            print(f"{video['id']}: {video['status']} (seed {video.get('seed')}, {video.get('num_frames')} frames, "
                  f"{video.get('size')})", file=sys.stderr)
            progress = Progress()
            try:
                video = client.wait(video["id"], on_update=progress.update)
            finally:
                progress.close()
            if video["status"] != "completed":
                print_json(video) if args.json else print(summary(video))
                return JOB_FAILED
            path = client.download(video["id"], args.out)
        if args.json:
            print_json({**video, "path": str(path)})
            return OK
        print(f"wrote {path} ({video.get('num_frames')} frames, {video.get('size')}, {video.get('fps')} fps, "
              f"seed {video.get('seed')})")
        print(f"routing: {shares(video)}")
        if video.get("compute"):
            print("expert work: " + ", ".join(f"{k} {v}" for k, v in video["compute"].items()))
        return OK
    return run_reporting("submit", args.server, run)


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit a prompt to a server, wait, and download the MP4")
    add_request_arguments(p)
    p.add_argument("--model", help="the served model's name (default: the server's)")
    p.add_argument("--seconds", help="length in seconds, instead of --frames")
    p.add_argument("--no-wait", action="store_true", help="print the job id (or its JSON) and return at once")
    add_server_arguments(p, json_help="print the finished job's JSON (with the MP4's path)")
    p.set_defaults(run=cmd_submit)
