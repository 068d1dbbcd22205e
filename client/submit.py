"""`paris submit "PROMPT" [--image FIRST.png] [--server URL] --out OUT.mp4`: create a job, show its
queue position and denoising progress while it waits, download the MP4."""

from __future__ import annotations

import sys

from tqdm import tqdm

from .api import DEFAULT_SERVER, ParisClient, ParisError


def cmd_submit(args) -> int:
    params = {"size": args.size, "num_frames": args.num_frames, "seconds": args.seconds, "seed": args.seed,
              "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "fps": args.fps,
              "top_k": args.top_k, "negative_prompt": args.negative_prompt,
              "expert_schedule": args.expert_schedule, "model": args.model, "speed": args.speed,
              "guidance_interval": args.guidance_interval}
    with ParisClient(args.server, api_key=args.api_key) as client:
        try:
            video = client.create(args.prompt, image=args.image, **params)
        except ParisError as exc:
            print(f"paris submit: {exc}", file=sys.stderr)
            return 2
        print(f"{video['id']}: {video['status']} (seed {video.get('seed')}, {video.get('num_frames')} frames, "
              f"{video.get('size')})", file=sys.stderr)
        bar = tqdm(total=100, unit="%", desc="queued", file=sys.stderr, dynamic_ncols=True)

        def update(v: dict) -> None:
            if v["status"] == "queued":
                bar.set_description(f"queued (position {v.get('queue_position')})")
            else:
                step, total = v.get("step") or 0, v.get("num_inference_steps") or 0
                bar.set_description(f"{v['status']} step {step}/{total}")
            bar.n = int(v.get("progress") or 0)
            bar.refresh()

        video = client.wait(video["id"], on_update=update)
        bar.close()
        if video["status"] != "completed":
            err = video.get("error") or {}
            print(f"paris submit: {video['id']} failed: {err.get('code')}: {err.get('message')}", file=sys.stderr)
            return 1
        path = client.download(video["id"], args.out)
        share = (video.get("routing") or {}).get("step_share")
        print(f"wrote {path} (seed {video.get('seed')}, share of steps per expert {share})", file=sys.stderr)
        if video.get("compute"):
            print("expert work: " + ", ".join(f"{k} {v}" for k, v in video["compute"].items()), file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit a prompt to a server and download the MP4")
    p.add_argument("prompt")
    p.add_argument("--image", help="first frame (PNG/JPEG/WebP): image-to-video")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"server URL (default {DEFAULT_SERVER}; env PARIS_SERVER)")
    p.add_argument("--api-key", help="API key (env PARIS_API_KEY)")
    p.add_argument("--out", required=True, help="output MP4 path")
    p.add_argument("--size")
    p.add_argument("--num-frames", type=int)
    p.add_argument("--seconds")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--fps", type=int)
    p.add_argument("--top-k", type=int)
    p.add_argument("--negative-prompt")
    p.add_argument("--expert-schedule", type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated expert index per step (bypasses the router)")
    p.add_argument("--model")
    p.add_argument("--speed", help="speed preset: quality, balanced or fast (default: the model's)")
    p.add_argument("--guidance-interval", type=lambda s: [float(x) for x in s.split(",")],
                   help="T_LOW,T_HIGH: the unconditional branches run only while t is inside")
    p.set_defaults(run=cmd_submit)
