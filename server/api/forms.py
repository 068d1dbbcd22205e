"""Form bodies (multipart/form-data and application/x-www-form-urlencoded) parsed whole, in a
thread, from bytes the caller has already size-capped: names and text values must be UTF-8
(no Latin-1 fallback: bytes that are not UTF-8 are a 400 naming the field), a field sent twice is
a 400 naming it (two images would otherwise keep one silently), and the counts of parts and
headers are bounded. A form's `charset` parameter may only say UTF-8."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from server.errors import APIError

MAX_FIELDS = 64


@dataclass(frozen=True)
class FormFile:
    filename: str
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """('multipart/form-data', {'boundary': ...}) from a Content-Type header, lower-cased type."""
    kind, params = parse_options_header(content_type)
    return kind.decode("latin-1").lower(), {k.decode("latin-1").lower(): v.decode("latin-1")
                                            for k, v in params.items()}


def parse_form(kind: str, params: dict[str, str], body: bytes, field_limit: int,
               file_limit: int) -> dict[str, str | FormFile]:
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise APIError(415, f"Form bodies must be UTF-8, not charset '{charset}'.", param="Content-Type",
                       code="unsupported_media_type")
    pairs = _multipart(body, params, field_limit, file_limit) if kind == "multipart/form-data" \
        else _urlencoded(body, field_limit)
    fields: dict[str, str | FormFile] = {}
    for name, value in pairs:
        if name in fields:
            raise APIError(400, f"'{name}' was sent more than once; send each field once.", param=name,
                           code="duplicate_parameter")
        fields[name] = value
    return fields


def _text(raw: bytes, name: str | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if name is None:
            raise APIError(400, "A field name is not valid UTF-8.", code="invalid_text") from None
        raise APIError(400, f"'{name}' is not valid UTF-8 text.", param=name, code="invalid_text") from None


def _urlencoded(body: bytes, field_limit: int) -> list[tuple[str, str]]:
    items = [item for item in body.split(b"&", MAX_FIELDS) if item]
    if len(items) > MAX_FIELDS:
        raise APIError(400, f"The form has more than {MAX_FIELDS} fields.", code="invalid_body")
    out = []
    for item in items:
        raw_name, _, raw_value = item.partition(b"=")
        name = _text(unquote_to_bytes(raw_name.replace(b"+", b" ")), None)
        if len(raw_value) > 3 * field_limit:
            raise APIError(413, f"'{name}' is longer than {field_limit} bytes.", param=name, code="field_too_large")
        out.append((name, _text(unquote_to_bytes(raw_value.replace(b"+", b" ")), name)))
    return out


def _multipart(body: bytes, params: dict[str, str], field_limit: int,
               file_limit: int) -> list[tuple[str, str | FormFile]]:
    boundary = params.get("boundary")
    if not boundary:
        raise APIError(400, "The multipart Content-Type has no boundary.", param="Content-Type", code="invalid_body")
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin():
        if len(parts) >= MAX_FIELDS:
            raise APIError(400, f"The form has more than {MAX_FIELDS} fields.", code="invalid_body")
        parts.append(_Part())

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        parts[-1].headers[header[0].lower()] = header[1]
        header[0], header[1] = b"", b""

    def on_part_data(data, start, end):
        part = parts[-1]
        part.data += data[start:end]
        if len(part.data) > file_limit:
            raise APIError(413, f"A form part is larger than the upload limit of {file_limit} bytes.",
                           param="input_reference", code="file_too_large")

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise APIError(400, f"Could not parse the form body: {exc}", code="invalid_body") from None
    out: list[tuple[str, str | FormFile]] = []
    for part in parts:
        disposition, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise APIError(400, "A form part has no Content-Disposition: form-data name.", code="invalid_body")
        name = _text(options[b"name"], None)
        if b"filename" in options:
            out.append((name, FormFile(options[b"filename"].decode("utf-8", "replace"), bytes(part.data))))
        elif len(part.data) > field_limit:
            raise APIError(413, f"'{name}' is longer than {field_limit} bytes.", param=name, code="field_too_large")
        else:
            out.append((name, _text(bytes(part.data), name)))
    return out
