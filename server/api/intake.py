"""From a validated `POST /v1/videos` body (and its decoded first frame) to the ResolvedRequest
the queue carries: the model check, `seconds` turned into frames, and the pipeline's `resolve` (the
same rules the engine relies on), its errors as 400s naming the parameter. Also the request's
fingerprint, which an Idempotency-Key is bound to."""

from __future__ import annotations

import hashlib
import json

from PIL import Image

from pipeline.errors import InvalidRequest
from pipeline.manifest import Limits, Manifest
from pipeline.request import REQUEST_FIELDS, GenerationRequest, ResolvedRequest, RoutingMode, resolve

from server.errors import APIError
from .schemas import CreateVideo


def resolve_create(body: CreateVideo, image: Image.Image | None, manifest: Manifest) -> ResolvedRequest:
    if body.model not in (None, manifest.name):
        raise APIError(400, f"The model '{body.model}' does not exist; this server serves '{manifest.name}'.",
                       param="model", code="model_not_found")
    num_frames = body.num_frames
    if num_frames is None and body.seconds is not None:
        fps = body.fps if body.fps is not None else manifest.sampling.fps
        num_frames = frames_for_seconds(body.seconds, fps if fps > 0 else 1, manifest.limits)
    routing = body.routing or (RoutingMode.SCHEDULE if body.expert_schedule else
                               RoutingMode.FIXED if body.expert is not None else None)
    given = {f.name: getattr(body, f.name) for f in REQUEST_FIELDS if not f.file}  # as the body has them
    request = GenerationRequest(**(given | {"num_frames": num_frames, "routing": routing, "image": image}))
    try:
        return resolve(manifest, request)
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from None


def frames_for_seconds(seconds: float, fps: int, limits: Limits) -> int:
    """The frame count (a multiple of the temporal compression, plus one) nearest to `seconds`."""
    tc = limits.temporal_compression
    longest = (limits.max_frames - 1) / fps
    if seconds > longest + tc / fps:  # before any arithmetic: 1e308 * fps is inf, and round(inf) raises
        raise APIError(400, f"seconds={seconds:g} is longer than this model makes at {fps} fps "
                            f"({limits.max_frames} frames, {longest:g} s).", param="seconds", code="invalid_value")
    frames = max(0, round(seconds * fps / tc)) * tc + 1
    if frames > limits.max_frames:
        raise APIError(400, f"seconds={seconds:g} at {fps} fps needs {frames} frames; this model makes at most "
                            f"{limits.max_frames} ({longest:g} s).", param="seconds", code="invalid_value")
    return frames


def fingerprint(body: CreateVideo, image_bytes: bytes | None) -> str:
    """sha256 of the request as validated (so a form and the same fields as JSON agree) and of the
    first frame's bytes: what an Idempotency-Key promises to repeat."""
    digest = hashlib.sha256(json.dumps(body.model_dump(mode="json", exclude_none=True), sort_keys=True).encode())
    digest.update(hashlib.sha256(image_bytes).digest() if image_bytes is not None else b"-")
    return digest.hexdigest()
