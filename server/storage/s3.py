"""Artifacts in an S3-compatible bucket (`artifact_url = s3://bucket/prefix`), through boto3.

The endpoint, credentials and region come the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, or ~/.aws/config and credentials), so the API and the workers
need only the same settings, no shared filesystem. Requests are retried with backoff (botocore's
standard mode; the worker's store for about a minute) so a storage restart costs no job; a longer
outage raises StorageError. `/content` streams the object through the API (Range passed on to S3), or, with
`presign_s > 0`, redirects to a presigned URL valid that many seconds.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image
from starlette.responses import RedirectResponse, Response, StreamingResponse

from . import INPUT, VARIANTS, StorageError, attempt_part, download_name, job_part, render

if TYPE_CHECKING:
    from pipeline.results import GenerationResult

SINGLE_RANGE = re.compile(r"^bytes=(\d+-\d*|-\d+)$")  # what S3 answers; anything else gets the whole object
CHUNK = 256 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _reason(exc: Exception) -> str:
    """What went wrong, without the endpoint or the bucket (this may reach a client)."""
    return exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix has no leading or trailing slash."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class S3Artifacts:
    def __init__(self, url: str, presign_s: int = 0, max_attempts: int = 3):
        self.bucket, self.prefix = parse_url(url)
        self.presign_s = presign_s
        self.client = boto3.client("s3", config=Config(  # backoff: random(0, 2^attempt) s, at most 20 s
            retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=5, read_timeout=30,
            signature_version="s3v4"))

    def _key(self, job_id: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, job_part(job_id), *parts) if p)

    def check(self) -> None:
        """Raise StorageError unless the bucket exists and answers (at startup)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"the artifact bucket {self.bucket!r} is not reachable ({_reason(exc)})") from exc

    def write_input(self, job_id: str, image: Image.Image) -> None:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        self._put(self._key(job_id, INPUT), buf.getvalue(), "image/png", "the first frame")

    def read_input(self, job_id: str) -> Image.Image:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, INPUT))["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                raise FileNotFoundError(INPUT) from None
            raise StorageError(f"could not read the first frame ({_reason(exc)})") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read the first frame ({_reason(exc)})") from exc
        with Image.open(io.BytesIO(body)) as im:
            return im.convert("RGB")

    def write(self, job_id: str, fence: int, result: GenerationResult) -> None:
        with tempfile.TemporaryDirectory(prefix="paris-") as tmp:
            render(result, Path(tmp))
            for filename, media_type in VARIANTS.values():
                self._put(self._key(job_id, attempt_part(fence), filename), (Path(tmp) / filename).read_bytes(),
                          media_type, "the video")

    def _put(self, key: str, data: bytes, media_type: str, what: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=media_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not store {what} ({_reason(exc)})") from exc

    def response(self, job_id: str, fence: int, variant: str, range_header: str | None) -> Response:
        filename, media_type = VARIANTS[variant]
        key = self._key(job_id, attempt_part(fence), filename)
        disposition = f'attachment; filename="{download_name(job_id, variant)}"'
        if self.presign_s:
            self._head(key)  # a missing object is our 404, not the storage's
            url = self.client.generate_presigned_url("get_object", ExpiresIn=self.presign_s, Params={
                "Bucket": self.bucket, "Key": key, "ResponseContentType": media_type,
                "ResponseContentDisposition": disposition})
            return RedirectResponse(url, status_code=307)
        ranged = range_header is not None and SINGLE_RANGE.match(range_header.strip())
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key,
                                         **({"Range": range_header.strip()} if ranged else {}))
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in _MISSING:
                raise FileNotFoundError(variant) from None
            if code == "InvalidRange":
                return Response(status_code=416, headers={"Content-Range": f"bytes */{self._head(key)}"})
            raise StorageError(f"could not read the {variant} ({_reason(exc)})") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read the {variant} ({_reason(exc)})") from exc
        headers = {"Content-Length": str(obj["ContentLength"]), "Accept-Ranges": "bytes",
                   "Content-Disposition": disposition}
        if obj.get("ContentRange"):
            headers["Content-Range"] = obj["ContentRange"]
        return StreamingResponse(obj["Body"].iter_chunks(CHUNK), status_code=206 if "Content-Range" in headers else 200,
                                 media_type=media_type, headers=headers)

    def _head(self, key: str) -> int:
        """The object's size; FileNotFoundError when it is missing."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                raise FileNotFoundError(key.rsplit("/", 1)[-1]) from None
            raise StorageError(f"could not read the artifact ({_reason(exc)})") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read the artifact ({_reason(exc)})") from exc

    def remove_attempt(self, job_id: str, fence: int) -> None:
        self._remove_under(self._key(job_id, attempt_part(fence)) + "/")

    def remove(self, job_id: str) -> None:
        self._remove_under(self._key(job_id) + "/")

    def _remove_under(self, prefix: str) -> None:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not delete artifacts ({_reason(exc)})") from exc
