"""A load run against a real `paris serve`: many clients at once, ordinary text-to-video and
image-to-video jobs, requests repeated with the same Idempotency-Key (sometimes racing the
original), and hostile requests mixed in. Every accepted job must end (completed, or failed with
a message), none may be lost or created twice, and no request may get a 5xx.

Clients belong to a few tenants (one API key each; an Idempotency-Key is scoped to its key).
Each client takes the next request from one shared list, sends it, and for an accepted job polls
until it ends before taking the next. Afterwards every tenant's job list is read back: the jobs
the server holds must be exactly the distinct jobs it accepted. Prints one JSON object."""

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from PIL import Image

from tests.benchmarks.bench_engine import PROMPTS
from tests.benchmarks.bench_served import free_port, wait_ready
from weights import DEFAULT_MODEL


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def raw(text: str):
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


# kind -> the request's keyword arguments for httpx (built lazily: some images are large)
HOSTILE = {
    "seconds_1e308": lambda: {"json": {"prompt": PROMPTS[0], "seconds": 1e308}},
    "seconds_infinity": lambda: raw(f'{{"prompt": "{PROMPTS[0]}", "seconds": Infinity}}'),
    "seconds_nan": lambda: raw(f'{{"prompt": "{PROMPTS[0]}", "seconds": NaN}}'),
    "seconds_inf_string": lambda: {"json": {"prompt": PROMPTS[0], "seconds": "inf"}},
    "prompt_lone_surrogate": lambda: raw('{"prompt": "a red \\udfff circle"}'),
    "negative_prompt_lone_surrogate": lambda: raw(f'{{"prompt": "{PROMPTS[1]}", "negative_prompt": "\\udfff"}}'),
    "nested_100000_deep": lambda: raw(f'{{"prompt": "{PROMPTS[2]}", "expert_schedule": '
                                      + "[" * 100_000 + "]" * 100_000 + "}"),
    "image_1x1": lambda: {"data": {"prompt": PROMPTS[3]}, "files": {"input_reference": ("a.png", png(1, 1))}},
    "image_16000000x1": lambda: {"data": {"prompt": PROMPTS[4]},
                                 "files": {"input_reference": ("a.png", png(16_000_000, 1))}},
    "image_4000000x4": lambda: {"data": {"prompt": PROMPTS[5]},
                                "files": {"input_reference": ("a.png", png(4_000_000, 4))}},
}


@dataclass
class Item:
    kind: str  # "t2v", "i2v", "repeat" or a HOSTILE kind
    tenant: int
    request: dict
    key: str | None = None  # Idempotency-Key


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    by_kind: dict = field(default_factory=dict)  # kind -> Counter of status codes
    server_errors: list = field(default_factory=list)  # (kind, status, body)
    accepted: dict = field(default_factory=dict)  # job id -> (tenant, kind)
    by_key: dict = field(default_factory=dict)  # (tenant, key) -> set of job ids
    final: dict = field(default_factory=dict)  # job id -> final Video object

    def record(self, item: Item, response: httpx.Response) -> str | None:
        with self.lock:
            self.statuses[response.status_code] += 1
            self.by_kind.setdefault(item.kind, Counter())[response.status_code] += 1
            if response.status_code >= 500:
                self.server_errors.append((item.kind, response.status_code, response.text[:300]))
            if response.status_code != 200:
                return None
            job_id = response.json()["id"]
            self.accepted.setdefault(job_id, (item.tenant, item.kind))
            if item.key:
                self.by_key.setdefault((item.tenant, item.key), set()).add(job_id)
            return job_id


def plan(n: int, tenants: int, repeat_share: float, hostile_share: float, hostile_kinds: list[str],
         steps: int, rng: random.Random) -> list[Item]:
    items: list[Item] = []
    keyed: list[Item] = []
    for i in range(n):
        tenant = i % tenants
        roll = rng.random()
        if keyed and roll < repeat_share:
            original = rng.choice(keyed)
            items.append(Item("repeat", original.tenant, original.request, original.key))
        elif roll < repeat_share + hostile_share and hostile_kinds:
            kind = hostile_kinds[len([x for x in items if x.kind in HOSTILE]) % len(hostile_kinds)]
            items.append(Item(kind, tenant, {"kind": kind}))
        else:
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "num_inference_steps": steps}
            if i % 5 == 4:
                request = {"data": {k: str(v) for k, v in body.items()},
                           "files": {"input_reference": ("first.png", png(32, 32))}}
                item = Item("i2v", tenant, request, key=f"key-{i}" if rng.random() < 0.5 else None)
            else:
                item = Item("t2v", tenant, {"json": body}, key=f"key-{i}" if rng.random() < 0.5 else None)
            items.append(item)
            if item.key:
                keyed.append(item)
    return items


def client(base: str, keys: list[str], work: list[Item], take: threading.Lock, tally: Tally,
           deadline: float) -> None:
    with httpx.Client(base_url=base, timeout=120) as http:
        while True:
            with take:
                if not work:
                    return
                item = work.pop(0)
            request = HOSTILE[item.kind]() if item.kind in HOSTILE else item.request
            headers = {"Authorization": f"Bearer {keys[item.tenant]}", **request.get("headers", {})}
            if item.key:
                headers["Idempotency-Key"] = item.key
            try:
                response = http.post("/v1/videos", headers=headers,
                                     **{k: v for k, v in request.items() if k != "headers"})
            except httpx.HTTPError as exc:  # the server dropped the connection: as bad as a 5xx
                with tally.lock:
                    tally.by_kind.setdefault(item.kind, Counter())["no response"] += 1
                    tally.server_errors.append((item.kind, "no response", repr(exc)))
                continue
            job_id = tally.record(item, response)
            while job_id and time.time() < deadline:
                video = http.get(f"/v1/videos/{job_id}", headers={"Authorization": headers["Authorization"]}).json()
                if video.get("status") in ("completed", "failed"):
                    break
                time.sleep(0.5)


def listed(http: httpx.Client, key: str) -> list[dict]:
    out, after = [], None
    while True:
        page = http.get("/v1/videos", params={"limit": 100, **({"after": after} if after else {})},
                        headers={"Authorization": f"Bearer {key}"}).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--jobs", type=int, default=200, help="requests sent in all")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--repeat-share", type=float, default=0.1, help="share of requests repeating a keyed one")
    parser.add_argument("--hostile-share", type=float, default=0.15)
    parser.add_argument("--hostile", default=",".join(HOSTILE), help="comma-separated kinds of hostile request")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900, help="seconds before unfinished jobs count as lost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", help="write the server's log here (default: discarded)")
    args = parser.parse_args()
    kinds = [k for k in args.hostile.split(",") if k]
    unknown = set(kinds) - HOSTILE.keys()
    if unknown:
        parser.error(f"unknown hostile kinds: {sorted(unknown)}")
    keys = [f"load-tenant-{t}-{os.urandom(6).hex()}" for t in range(args.tenants)]
    work = plan(args.jobs, args.tenants, args.repeat_share, args.hostile_share, kinds, args.steps,
                random.Random(args.seed))
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "PARIS_API_KEYS": ",".join(keys)}
        log = open(args.server_log, "wb") if args.server_log else subprocess.DEVNULL
        server = subprocess.Popen([sys.executable, "-m", "client.cli", "serve", "--model", args.model, "--port", str(port),
                                   "--data-dir", f"{tmp}/data", "--max-batch", str(args.max_batch)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            http = httpx.Client(base_url=base, timeout=120)
            wait_ready(http, server)
            load_before = os.getloadavg()[0]
            start = time.time()
            deadline = start + args.timeout
            take = threading.Lock()
            threads = [threading.Thread(target=client, args=(base, keys, work, take, tally, deadline))
                       for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for job_id, (tenant, _) in tally.accepted.items():  # wait for every accepted job to end
                auth = {"Authorization": f"Bearer {keys[tenant]}"}
                while True:
                    video = http.get(f"/v1/videos/{job_id}", headers=auth)
                    if video.status_code != 200 or video.json()["status"] in ("completed", "failed") \
                            or time.time() > deadline:
                        break
                    time.sleep(0.2)
                tally.final[job_id] = video.json() if video.status_code == 200 else None
            seconds = time.time() - start
            held = {v["id"] for key in keys for v in listed(http, key)}
            downloads_missing = sum(
                1 for job_id, v in tally.final.items() if v and v["status"] == "completed" and http.get(
                    f"/v1/videos/{job_id}/content",
                    headers={"Authorization": f"Bearer {keys[tally.accepted[job_id][0]]}"}).status_code != 200)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    final = tally.final
    ended = {j for j, v in final.items() if v and v["status"] in ("completed", "failed")}
    ordinary = {j for j, (_, kind) in tally.accepted.items() if kind in ("t2v", "i2v")}
    print(json.dumps({"load": {
        "requests": args.jobs, "clients": args.clients, "tenants": args.tenants, "steps": args.steps,
        "cpus": os.cpu_count(), "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(seconds, 1),
        "requests_by_kind": {kind: sum(c.values()) for kind, c in sorted(tally.by_kind.items())},
        "status_codes": {str(k): v for k, v in sorted(tally.statuses.items())},
        "status_codes_by_kind": {kind: {str(k): v for k, v in sorted(c.items(), key=str)} for kind, c in sorted(tally.by_kind.items())},
        "server_errors": len(tally.server_errors),
        "server_errors_by_kind": dict(Counter(kind for kind, _, _ in tally.server_errors)),
        "server_error_samples": [list(e) for e in tally.server_errors[:5]],
        "accepted_jobs": len(tally.accepted),
        "completed": sum(1 for v in final.values() if v and v["status"] == "completed"),
        "failed": sum(1 for v in final.values() if v and v["status"] == "failed"),
        "failed_by_code": dict(Counter(v["error"]["code"] for v in final.values() if v and v["status"] == "failed")),
        "ordinary_not_completed": sum(1 for j in ordinary if not final.get(j) or final[j]["status"] != "completed"),
        "lost": len(tally.accepted.keys() - ended),
        "duplicated": sum(len(ids) - 1 for ids in tally.by_key.values()) + len(held - tally.accepted.keys()),
        "completed_without_video": downloads_missing,
        "jobs_per_min": round(60 * len(ended) / seconds, 1)}}, indent=2))


if __name__ == "__main__":
    main()
