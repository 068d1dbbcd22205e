"""A small client for the Paris video server (sync and async), over httpx.

    from client.api import ParisClient
    with ParisClient("http://127.0.0.1:8000", api_key=None) as c:
        video = c.create("a red circle moving left", image="first.png")
        video = c.wait(video["id"], on_update=print)
        c.download(video["id"], "out.mp4")
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from pathlib import Path
from typing import Any, Callable

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


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        try:
            err = resp.json().get("error") or {}
        except ValueError:
            err = {"message": resp.text}
        raise ParisError(resp.status_code, err)


def _form(prompt: str, params: dict[str, Any]) -> dict[str, str]:
    data = {"prompt": prompt}
    for k, v in params.items():
        if v is None:
            continue
        data[k] = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    return data


def _files(image: str | Path | bytes | None):
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray)):
        return {"input_reference": ("image.png", bytes(image), "application/octet-stream")}
    path = Path(image)
    return {"input_reference": (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or
                                "application/octet-stream")}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def finished(video: dict) -> bool:
    return video.get("status") in ("completed", "failed")


class ParisClient:
    def __init__(self, server: str = DEFAULT_SERVER, api_key: str | None = None, timeout: float = 60.0):
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=_headers(api_key or os.environ.get("PARIS_API_KEY")),
                                 timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.http.close()

    def create(self, prompt: str, image: str | Path | bytes | None = None, idempotency_key: str | None = None,
               **params) -> dict:
        """params: size, num_frames, seconds, seed, num_inference_steps, guidance_scale, fps, top_k,
        negative_prompt, expert_schedule (list of ints), model."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        resp = self.http.post("/v1/videos", data=_form(prompt, params), files=_files(image), headers=headers)
        _raise_for(resp)
        return resp.json()

    def retrieve(self, video_id: str) -> dict:
        resp = self.http.get(f"/v1/videos/{video_id}")
        _raise_for(resp)
        return resp.json()

    def list(self, **query) -> dict:
        resp = self.http.get("/v1/videos", params={k: v for k, v in query.items() if v is not None})
        _raise_for(resp)
        return resp.json()

    def cancel(self, video_id: str) -> dict:
        resp = self.http.post(f"/v1/videos/{video_id}/cancel")
        _raise_for(resp)
        return resp.json()

    def delete(self, video_id: str) -> dict:
        resp = self.http.delete(f"/v1/videos/{video_id}")
        _raise_for(resp)
        return resp.json()

    def trace(self, video_id: str) -> dict:
        resp = self.http.get(f"/v1/videos/{video_id}/trace")
        _raise_for(resp)
        return resp.json()

    def wait(self, video_id: str, on_update: Callable[[dict], None] | None = None, poll_s: float | None = None,
             timeout_s: float | None = None) -> dict:
        start = time.time()
        while True:
            resp = self.http.get(f"/v1/videos/{video_id}")
            _raise_for(resp)
            video = resp.json()
            if on_update:
                on_update(video)
            if finished(video):
                return video
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(f"{video_id} still {video['status']} after {timeout_s} s")
            time.sleep(poll_s if poll_s is not None else int(resp.headers.get("openai-poll-after-ms", 1000)) / 1000)

    def download(self, video_id: str, out: str | Path, variant: str = "video") -> Path:
        out = Path(out)
        with self.http.stream("GET", f"/v1/videos/{video_id}/content", params={"variant": variant}) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
        return out


class AsyncParisClient:
    def __init__(self, server: str = DEFAULT_SERVER, api_key: str | None = None, timeout: float = 60.0):
        self.http = httpx.AsyncClient(base_url=server.rstrip("/"),
                                      headers=_headers(api_key or os.environ.get("PARIS_API_KEY")), timeout=timeout)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def create(self, prompt: str, image: str | Path | bytes | None = None, idempotency_key: str | None = None,
                     **params) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        resp = await self.http.post("/v1/videos", data=_form(prompt, params), files=_files(image), headers=headers)
        _raise_for(resp)
        return resp.json()

    async def retrieve(self, video_id: str) -> dict:
        resp = await self.http.get(f"/v1/videos/{video_id}")
        _raise_for(resp)
        return resp.json()

    async def cancel(self, video_id: str) -> dict:
        resp = await self.http.post(f"/v1/videos/{video_id}/cancel")
        _raise_for(resp)
        return resp.json()

    async def delete(self, video_id: str) -> dict:
        resp = await self.http.delete(f"/v1/videos/{video_id}")
        _raise_for(resp)
        return resp.json()

    async def wait(self, video_id: str, on_update: Callable[[dict], None] | None = None,
                   poll_s: float | None = None, timeout_s: float | None = None) -> dict:
        start = time.time()
        while True:
            resp = await self.http.get(f"/v1/videos/{video_id}")
            _raise_for(resp)
            video = resp.json()
            if on_update:
                on_update(video)
            if finished(video):
                return video
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(f"{video_id} still {video['status']} after {timeout_s} s")
            await asyncio.sleep(poll_s if poll_s is not None else int(resp.headers.get("openai-poll-after-ms", 1000)) / 1000)

    async def download(self, video_id: str, out: str | Path, variant: str = "video") -> Path:
        out = Path(out)
        async with self.http.stream("GET", f"/v1/videos/{video_id}/content", params={"variant": variant}) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as f:
                async for chunk in resp.aiter_bytes():
                    f.write(chunk)
        return out
