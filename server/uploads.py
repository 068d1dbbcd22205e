"""Image uploads (`input_reference`): size cap, type by content (magic bytes), pixel cap before
decoding (decompression bombs)."""

from __future__ import annotations

import io

from PIL import Image

from .errors import APIError

_MAGIC = [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG")]


def sniff(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "input_reference") -> Image.Image:
    if len(data) > max_bytes:
        raise APIError(413, f"'{param}' is {len(data)} bytes; the limit is {max_bytes} bytes.", param=param,
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
        w, h = img.size
        if w * h > max_pixels:
            raise APIError(400, f"'{param}' is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels.",
                           param=param, code="image_too_large")
        img.load()
        return img.convert("RGB")
    except APIError:
        raise
    except Image.DecompressionBombError as exc:
        raise APIError(400, f"'{param}' has too many pixels: {exc}", param=param, code="image_too_large") from None
    except Exception as exc:  # truncated or corrupt data
        raise APIError(400, f"'{param}' could not be decoded: {exc}", param=param, code="invalid_image") from None
