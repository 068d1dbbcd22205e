"""Image uploads (`input_reference`): size cap, type by content (magic bytes), pixel, side and
aspect-ratio caps read from the header before decoding (decompression bombs, 16,000,000x1 strips),
and decoding in worker threads, a few at a time, so big images never stall the event loop."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageOps

from server.errors import APIError

T = TypeVar("T")
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG")]


def sniff(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int
    max_aspect_ratio: float


class ImageSlots:
    """Image work (decoding an upload, encoding the stored first frame) in the threadpool, at most
    `concurrency` at once: the rest wait their turn without holding a thread or the event loop."""

    def __init__(self, concurrency: int):
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self, fn: Callable[..., T], *args) -> T:
        async with self._slots:
            return await run_in_threadpool(fn, *args)


def load_image(data: bytes, limits: ImageLimits, param: str = "input_reference") -> Image.Image:
    if len(data) > limits.max_bytes:
        raise APIError(413, f"'{param}' is {len(data)} bytes; the limit is {limits.max_bytes} bytes.", param=param,
                       code="file_too_large")
    if not data:
        raise APIError(400, f"'{param}' is empty.", param=param, code="invalid_image")
    kind = sniff(data)
    if kind is None:
        raise APIError(415, f"'{param}' must be a PNG, JPEG or WebP image (detected from its content, "
                            "not its name).", param=param, code="unsupported_media_type")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only; no pixels decoded yet
        if img.format != kind:
            raise APIError(415, f"'{param}' content is not a valid {kind} image.", param=param,
                           code="unsupported_media_type")
        _check_shape(*img.size, limits, param)
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")  # a phone photo's EXIF orientation, applied
    except APIError:
        raise
    except Image.DecompressionBombError as exc:
        raise APIError(400, f"'{param}' has too many pixels: {exc}", param=param, code="image_too_large") from None
    except Exception as exc:  # truncated or corrupt data
        raise APIError(400, f"'{param}' could not be decoded: {exc}", param=param, code="invalid_image") from None


def _check_shape(w: int, h: int, limits: ImageLimits, param: str) -> None:
    if w * h > limits.max_pixels:
        raise APIError(400, f"'{param}' is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} pixels.",
                       param=param, code="image_too_large")
    if max(w, h) > limits.max_side:
        raise APIError(400, f"'{param}' is {w}x{h}; no side may exceed {limits.max_side} pixels.",
                       param=param, code="image_too_large")
    if max(w, h) > limits.max_aspect_ratio * max(1, min(w, h)):
        raise APIError(400, f"'{param}' is {w}x{h}; the longer side may be at most {limits.max_aspect_ratio:g} "
                            "times the shorter.", param=param, code="image_too_large")
