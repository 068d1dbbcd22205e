"""Reading the body of `POST /v1/videos`: multipart or urlencoded form (what the OpenAI SDK sends)
or JSON, size-capped while it streams in, validated into `CreateVideo`, with the first frame's
bytes (a file field or a base64 data URL) set aside for server/uploads.py."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from .errors import APIError, validation_error
from .schemas import CreateVideo

FORM_FIELD_LIMIT = 1024 * 1024


async def read_create_video(request: Request, max_upload_bytes: int) -> tuple[CreateVideo, bytes | None]:
    """The validated fields and the uploaded first frame (None for text-to-video)."""
    fields, image = await _read_fields(request, max_upload_bytes)
    try:
        return CreateVideo.model_validate(fields), image
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def _read_fields(request: Request, max_upload_bytes: int) -> tuple[dict, bytes | None]:
    ctype = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length", "")
    limit = max_upload_bytes + FORM_FIELD_LIMIT
    if length.isdigit() and int(length) > limit:
        raise _too_large(int(length), max_upload_bytes)
    request = _limited(request, limit, max_upload_bytes)
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        return await _read_form(request, max_upload_bytes)
    if ctype.startswith("application/json") or not ctype:
        return await _read_json(request)
    raise APIError(415, f"Unsupported content type '{ctype}'; send multipart/form-data or application/json.",
                   code="unsupported_media_type")


async def _read_form(request: Request, max_upload_bytes: int) -> tuple[dict, bytes | None]:
    try:
        form = await request.form(max_files=2, max_fields=64, max_part_size=FORM_FIELD_LIMIT)
    except APIError:
        raise
    except Exception as exc:
        raise APIError(400, f"Could not parse the form body: {exc}", code="invalid_body") from None
    fields: dict = {}
    image: bytes | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "input_reference":
                raise APIError(400, f"Unexpected file field '{key}'.", param=key, code="unknown_parameter")
            image = await value.read(max_upload_bytes + 1)
        elif key.startswith("input_reference["):  # {"image_url": ...} sent as form fields
            if key != "input_reference[image_url]":
                raise APIError(400, "input_reference by file_id is not supported; upload the image.",
                               param="input_reference", code="unsupported")
            image = _decode_data_url(value)
        elif value != "" or key == "prompt":
            fields[key] = value
    await form.close()
    return fields, image


async def _read_json(request: Request) -> tuple[dict, bytes | None]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise APIError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The JSON body must be an object.", code="invalid_json")
    ref = body.pop("input_reference", None)
    if isinstance(ref, dict) and ref.get("image_url"):
        return body, _decode_data_url(ref["image_url"])
    if ref is not None:
        raise APIError(400, "input_reference in JSON must be {\"image_url\": \"data:...;base64,...\"}; or send "
                            "multipart/form-data with an image file.", param="input_reference", code="unsupported")
    return body, None


def _decode_data_url(url: str) -> bytes:
    if not url.startswith("data:") or ";base64," not in url:
        raise APIError(400, "input_reference.image_url must be a base64 data URL (data:image/png;base64,...); "
                            "this server does not fetch remote URLs.", param="input_reference", code="unsupported")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "input_reference.image_url is not valid base64.", param="input_reference",
                       code="invalid_image") from None


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"Request body is {size} bytes or more; the upload limit is {limit} bytes.",
                    param="input_reference", code="file_too_large")


def _limited(request: Request, limit: int, upload_limit: int) -> Request:
    """The same request with a body that stops at `limit` bytes (chunked uploads have no length)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(seen, upload_limit)
        return message

    return Request(request.scope, receive)
