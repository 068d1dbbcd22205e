"""Reading the body of `POST /v1/videos`: multipart or urlencoded form (what the OpenAI SDK sends)
or JSON, size-capped and time-limited while it streams in, validated into `CreateVideo`, with the
first frame's bytes (a file field or a base64 data URL) set aside for server/api/uploads.py.

Every string that arrives (field names too) must be text UTF-8 can encode: JSON's `\\udfff` escape
and some form charsets make lone surrogates, which no tokenizer takes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from server.errors import APIError, validation_error
from .forms import FormFile, media_type, parse_form
from .schemas import CreateVideo

FORM_FIELD_LIMIT = 1024 * 1024
# The shape of a JSON body, checked with a few C-speed byte scans before it is decoded (a body of
# 5 million numbers would otherwise become 5 million objects): what a real request needs, with room.
MAX_JSON_DEPTH = 16      # the body needs 2 ({"input_reference": {"image_url": ...}})
MAX_JSON_CONTAINERS = 64  # objects and arrays in all
MAX_JSON_STRINGS = 256   # keys and string values
MAX_JSON_VALUES = 1024   # commas outside strings (expert_schedule has at most one per step)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


async def read_create_video(request: Request, max_upload_bytes: int,
                            timeout_s: float) -> tuple[CreateVideo, bytes | None]:
    """The validated fields and the uploaded first frame (None for text-to-video)."""
    fields, image = await _read_fields(request, max_upload_bytes, timeout_s)
    try:
        return CreateVideo.model_validate(fields), image
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def _read_fields(request: Request, max_upload_bytes: int, timeout_s: float) -> tuple[dict, bytes | None]:
    kind, params = media_type(request.headers.get("content-type", ""))
    length = request.headers.get("content-length", "")
    limit = max_upload_bytes + FORM_FIELD_LIMIT
    if length.isdigit() and int(length) > limit:
        raise _too_large(int(length), max_upload_bytes)
    request = _limited(request, limit, max_upload_bytes, timeout_s)
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        body = await request.body()  # size-capped as it streams in; parsed whole, off the loop
        return await run_in_threadpool(_form_fields, kind, params, body, max_upload_bytes)
    if kind == "application/json" or not kind:
        return await _read_json(request)
    raise APIError(415, f"Unsupported content type '{kind}'; send multipart/form-data or application/json.",
                   param="Content-Type", code="unsupported_media_type")


def _form_fields(kind: str, params: dict[str, str], body: bytes, max_upload_bytes: int) -> tuple[dict, bytes | None]:
    fields: dict = {}
    image: bytes | None = None
    for key, value in parse_form(kind, params, body, FORM_FIELD_LIMIT, max_upload_bytes).items():
        if isinstance(value, FormFile) or key.startswith("input_reference["):
            if image is not None:
                raise APIError(400, "Send one input_reference image, not two.", param="input_reference",
                               code="duplicate_parameter")
            if isinstance(value, FormFile):
                if key != "input_reference":
                    raise APIError(400, f"Unexpected file field '{key}'.", param=key, code="unknown_parameter")
                image = value.data
            else:  # {"image_url": ...} sent as form fields
                if key != "input_reference[image_url]":
                    raise APIError(400, "input_reference by file_id is not supported; upload the image.",
                                   param="input_reference", code="unsupported")
                image = _decode_data_url(value)
        elif value != "" or key == "prompt":
            fields[key] = value
    check_text(fields)
    return fields, image


async def _read_json(request: Request) -> tuple[dict, bytes | None]:
    return await run_in_threadpool(_json_fields, await request.body() or b"{}")  # up to ~11 MB: off the loop


def _json_fields(data: bytes) -> tuple[dict, bytes | None]:
    body = _decode_json(data)
    ref = body.pop("input_reference", None)
    if isinstance(ref, dict) and ref.get("image_url"):
        return body, _decode_data_url(ref["image_url"])
    if ref is not None:
        raise APIError(400, "input_reference in JSON must be {\"image_url\": \"data:...;base64,...\"}; or send "
                            "multipart/form-data with an image file.", param="input_reference", code="unsupported")
    return body, None


def _decode_json(data: bytes) -> dict:
    """The body as a dict of checked text (in a thread: every step here is proportional to it)."""
    body = parse_json(data)
    if not isinstance(body, dict):
        raise APIError(400, "The JSON body must be an object.", code="invalid_json")
    check_text(body)
    return body


def check_json_shape(data: bytes) -> None:
    """400 for a body with more nesting, containers, strings or values than a request has, found
    with byte scans only: escaped backslashes and quotes removed, what lies outside the quotes is
    the structure."""
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    parts = plain.split(b'"', 2 * MAX_JSON_STRINGS + 1)  # bounded: a body of quotes makes no million parts
    too_many_strings = len(parts) > 2 * MAX_JSON_STRINGS + 1
    outside = b"".join((parts[:-1] if too_many_strings else parts)[::2])
    brackets = outside.translate(None, delete=_NOT_BRACKETS)
    depth = 0
    for b in brackets[:2 * MAX_JSON_CONTAINERS + 1]:  # bounded: past them the count below refuses it
        depth += 1 if b in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"The JSON body is nested too deeply (more than {MAX_JSON_DEPTH} levels).",
                           code="invalid_json")
    if too_many_strings:
        raise _shape_error(f"more than {MAX_JSON_STRINGS} strings")
    if outside.count(b",") > MAX_JSON_VALUES:
        raise _shape_error(f"more than {MAX_JSON_VALUES} values")
    if len(brackets) > 2 * MAX_JSON_CONTAINERS:
        raise _shape_error(f"more than {MAX_JSON_CONTAINERS} objects and arrays")


def _shape_error(what: str) -> APIError:
    return APIError(400, f"The JSON body has {what}; a video request needs far fewer.", code="invalid_json")


def parse_json(data: bytes):
    """json.loads, after checking the body's shape (the decoder recurses once per level and
    makes an object per value)."""
    check_json_shape(data)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: only if the depth check above were wrong
        raise APIError(400, "The body is not valid JSON.", code="invalid_json") from None


def check_text(value: object, path: str | None = None) -> None:
    """400 `invalid_text` naming the first string (or field name) UTF-8 cannot encode."""
    if isinstance(value, str):
        if not _encodable(value):
            raise APIError(400, f"'{path}' is not valid UTF-8 text (it holds a lone surrogate such as \\udfff).",
                           param=path, code="invalid_text")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                raise APIError(400, "A field name is not valid UTF-8 text (it holds a lone surrogate).",
                               code="invalid_text")
            check_text(item, key if path is None else f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            check_text(item, path)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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


def _limited(request: Request, limit: int, upload_limit: int, timeout_s: float) -> Request:
    """The same request with a body that stops at `limit` bytes (chunked uploads have no length)
    and must arrive within `timeout_s` (a client that sends half a body and stops gets a 408)."""
    seen = 0
    complete = False
    deadline = asyncio.get_running_loop().time() + timeout_s

    async def receive():
        nonlocal seen, complete
        if complete:
            return await request.receive()
        try:
            message = await asyncio.wait_for(request.receive(), deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            raise APIError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           code="request_timeout") from None
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(seen, upload_limit)
            complete = not message.get("more_body", False)
        return message

    return Request(request.scope, receive)
