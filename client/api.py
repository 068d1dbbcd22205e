"""A small client for the Paris video server (sync and async), over httpx.

    from client.api import ParisClient
    with ParisClient("http://127.0.0.1:8000", api_key=None) as c:
        video = c.create("a red circle moving left", image="first.png")
        video = c.wait(video["id"], on_update=print)
        c.download(video["id"], "out.mp4")

`AsyncParisClient` has the same methods, to be awaited. A 429 (the server's queue is full, or
this key is at its limit; nothing was done) is sent again after its Retry-After, up to
`max_retries` times, so `paris submit` waits out backpressure too. Each operation is written once (in
`_Operations`) as a `Call`, a request not yet sent; the two clients differ only in how they send.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Generic, Iterator, TypeVar

import httpx

DEFAULT_SERVER = os.environ.get("PARIS_SERVER", "http://127.0.0.1:8000")


class ParisError(RuntimeError):
    def __init__(self, status: int, error: dict):
        self.status = status
        self.error = error
        self.code = error.get("code")
        self.param = error.get("param")
        where = f" ({self.param})" if self.param else ""
        super().__init__(f"{status} {error.get('code')}{where}: {error.get('message')}")


@dataclass(frozen=True)
class SSEvent:
    """One Server-Sent Event: its id (for Last-Event-ID), type and JSON data."""

    id: str | None
    event: str
    data: dict

    @classmethod
    def parse(cls, frame: str) -> "SSEvent | None":
        """A frame's event; None for frames without data (retry hints, keep-alive comments)."""
        fields: dict[str, list[str]] = {}
        for line in frame.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" not in fields:
            return None
        return cls((fields.get("id") or [None])[-1], (fields.get("event") or ["message"])[-1],
                   json.loads("\n".join(fields["data"])))

    def to_json(self) -> dict:
        return {"id": self.id, "event": self.event, "data": self.data}


def finished(video: dict) -> bool:
    return video.get("status") in ("completed", "failed")


# ---- requests: what to send ----------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One HTTP request to the server, described before it is sent."""

    method: str
    url: str
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for httpx's `request` and `stream` (sync and async alike)."""
        return {"method": self.method, "url": self.url, "params": self.params, "data": self.data,
                "files": self.files, "headers": self.headers}


def _form(prompt: str, params: dict[str, Any]) -> dict[str, str]:
    data = {"prompt": prompt}
    for k, v in params.items():
        if v is None:
            continue
        data[k] = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    return data


def _files(image: str | Path | bytes | None) -> dict[str, tuple[str, bytes, str]] | None:
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray)):
        return {"input_reference": ("image.png", bytes(image), "application/octet-stream")}
    path = Path(image)
    return {"input_reference": (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or
                                "application/octet-stream")}


def _http_options(server: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """Arguments for httpx.Client and httpx.AsyncClient."""
    api_key = api_key or os.environ.get("PARIS_API_KEY")
    return {"base_url": server.rstrip("/"), "timeout": timeout,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {}}


# ---- responses: what came back ---------------------------------------------------------------------
def _check(resp: httpx.Response) -> None:
    """Raises ParisError (the server's error envelope) for a 4xx/5xx; the body must have been read."""
    if resp.is_error:
        try:
            err = resp.json().get("error") or {}
        except ValueError:
            err = {"message": resp.text}
        raise ParisError(resp.status_code, err)


MAX_RETRIES = 5          # 429s (server busy, or this key at its limit) sent again, honouring Retry-After
MAX_RETRY_DELAY_S = 60.0


def _retry_delay(resp: httpx.Response, retries_left: int) -> float | None:
    """Seconds to wait before sending a request again that the server answered 429 (nothing was
    done: its queue or this key's limit was full), or None to give up."""
    if resp.status_code != 429 or retries_left <= 0:
        return None
    after = resp.headers.get("retry-after", "")
    return min(MAX_RETRY_DELAY_S, float(after)) if after.isdigit() else 1.0


def _result(resp: httpx.Response) -> dict:
    _check(resp)
    return resp.json()


def _open_output(resp: httpx.Response, out: Path) -> IO[bytes]:
    """The file a download is written to, once the response is known to be a success."""
    _check(resp)
    out.parent.mkdir(parents=True, exist_ok=True)
    return open(out, "wb")


class _Poll:
    """One `wait`: after each retrieve, either the video has finished, or how long to sleep before
    the next retrieve (the caller's poll_s, else the server's openai-poll-after-ms)."""

    def __init__(self, video_id: str, on_update: Callable[[dict], None] | None, poll_s: float | None,
                 timeout_s: float | None):
        self.call = Call("GET", f"/v1/videos/{video_id}")
        self.on_update, self.poll_s, self.timeout_s = on_update, poll_s, timeout_s
        self.start = time.monotonic()
        self.video: dict = {}

    def delay(self, resp: httpx.Response) -> float | None:
        """Seconds to sleep, or None once `self.video` has finished; TimeoutError past timeout_s."""
        self.video = _result(resp)
        if self.on_update:
            self.on_update(self.video)
        if finished(self.video):
            return None
        if self.timeout_s is not None and time.monotonic() - self.start > self.timeout_s:
            raise TimeoutError(f"{self.video['id']} still {self.video['status']} after {self.timeout_s} s")
        return self.poll_s if self.poll_s is not None else int(resp.headers.get("openai-poll-after-ms", 1000)) / 1000


# ---- the operations, once; the clients only send ---------------------------------------------------
JSON = TypeVar("JSON")  # dict for ParisClient, Awaitable[dict] for AsyncParisClient
FILE = TypeVar("FILE")  # Path for ParisClient, Awaitable[Path] for AsyncParisClient


class _Operations(ABC, Generic[JSON, FILE]):
    @abstractmethod
    def _send(self, call: Call) -> JSON:
        """The response's JSON, or ParisError."""

    @abstractmethod
    def _wait(self, poll: _Poll) -> JSON:
        """Retrieve and sleep as `poll` says; the finished video."""

    @abstractmethod
    def _download(self, call: Call, out: Path) -> FILE:
        """Stream the response body into `out`; `out`, or ParisError."""

    def create(self, prompt: str, image: str | Path | bytes | None = None, idempotency_key: str | None = None,
               **params) -> JSON:
        """params: the fields of `POST /v1/videos` (pipeline/request.py's GenerationRequest declares
        them, plus `model`, `seconds` and `webhook_url`), e.g. seed=5, num_inference_steps=20,
        expert_schedule=[0, 2, 1], guidance_interval=(0.15, 1.0); lists are sent comma-separated."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._send(Call("POST", "/v1/videos", data=_form(prompt, params), files=_files(image), headers=headers))

    def retrieve(self, video_id: str) -> JSON:
        return self._send(Call("GET", f"/v1/videos/{video_id}"))

    def list(self, **query) -> JSON:
        """query: after, limit, order."""
        return self._send(Call("GET", "/v1/videos", params={k: v for k, v in query.items() if v is not None}))

    def cancel(self, video_id: str) -> JSON:
        return self._send(Call("POST", f"/v1/videos/{video_id}/cancel"))

    def delete(self, video_id: str) -> JSON:
        return self._send(Call("DELETE", f"/v1/videos/{video_id}"))

    def trace(self, video_id: str) -> JSON:
        return self._send(Call("GET", f"/v1/videos/{video_id}/trace"))

    def wait(self, video_id: str, on_update: Callable[[dict], None] | None = None, poll_s: float | None = None,
             timeout_s: float | None = None) -> JSON:
        """Poll until the video is completed or failed; on_update sees every retrieved video."""
        return self._wait(_Poll(video_id, on_update, poll_s, timeout_s))

    def download(self, video_id: str, out: str | Path, variant: str = "video") -> FILE:
        """variant: video (MP4), thumbnail or spritesheet (PNG)."""
        return self._download(Call("GET", f"/v1/videos/{video_id}/content", params={"variant": variant}), Path(out))


class ParisClient(_Operations[dict, Path]):
    def __init__(self, server: str = DEFAULT_SERVER, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = MAX_RETRIES):
        self.http = httpx.Client(**_http_options(server, api_key, timeout))
        self.max_retries = max_retries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call) -> dict:
        return _result(self._request(call))

    def _request(self, call: Call) -> httpx.Response:
        retries = self.max_retries
        while (delay := _retry_delay(resp := self.http.request(**call.options()), retries)) is not None:
            retries -= 1
            time.sleep(delay)
        return resp

    def _wait(self, poll: _Poll) -> dict:
        while (delay := poll.delay(self._request(poll.call))) is not None:
            time.sleep(delay)
        return poll.video

    def _download(self, call: Call, out: Path) -> Path:
        with self.http.stream(**call.options()) as resp:
            if resp.is_error:
                resp.read()  # the error envelope, for ParisError
            with _open_output(resp, out) as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
        return out

    def events(self, video_id: str, last_event_id: str | None = None) -> Iterator[SSEvent]:
        """The job's Server-Sent Events, from after `last_event_id` (from its first event when
        None) to its last (completed or failed), when the server ends the stream."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        with self.http.stream("GET", f"/v1/videos/{video_id}/events", headers=headers,
                              timeout=httpx.Timeout(self.http.timeout.connect, read=None)) as resp:
            if resp.is_error:
                resp.read()
                _check(resp)
            buffer = ""
            for text in resp.iter_text():
                buffer += text
                while "\n\n" in buffer:
                    frame, buffer = buffer.split("\n\n", 1)
                    event = SSEvent.parse(frame)
                    if event is not None:
                        yield event


class AsyncParisClient(_Operations[Awaitable[dict], Awaitable[Path]]):
    def __init__(self, server: str = DEFAULT_SERVER, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = MAX_RETRIES):
        self.http = httpx.AsyncClient(**_http_options(server, api_key, timeout))
        self.max_retries = max_retries

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call) -> dict:
        return _result(await self._request(call))

    async def _request(self, call: Call) -> httpx.Response:
        retries = self.max_retries
        while (delay := _retry_delay(resp := await self.http.request(**call.options()), retries)) is not None:
            retries -= 1
            await asyncio.sleep(delay)
        return resp

    async def _wait(self, poll: _Poll) -> dict:
        while (delay := poll.delay(await self._request(poll.call))) is not None:
            await asyncio.sleep(delay)
        return poll.video

    async def _download(self, call: Call, out: Path) -> Path:
        async with self.http.stream(**call.options()) as resp:
            if resp.is_error:
                await resp.aread()  # the error envelope, for ParisError
            with _open_output(resp, out) as f:
                async for chunk in resp.aiter_bytes():
                    f.write(chunk)
        return out
