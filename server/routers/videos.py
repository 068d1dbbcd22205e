"""/v1/videos: create, retrieve, list, delete, cancel, content, trace (OpenAI Videos API shape)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pipeline.errors import InvalidRequest
from pipeline.request import GenerationRequest, resolve

from ..artifacts import VARIANTS
from ..auth import require_owner
from ..errors import APIError, not_found
from ..queue import JOB_ID_RE, new_job_id
from ..schemas import CreateVideo, Video, VideoDeleted, VideoError, VideoList
from ..uploads import load_image

router = APIRouter(prefix="/v1", tags=["videos"])
log = logging.getLogger("paris.api")
FORM_FIELD_LIMIT = 1024 * 1024


# ---- helpers -----------------------------------------------------------------------------------
def _int(v, default=None):
    try:
        return int(v) if v not in (None, "") else default
    except ValueError:
        return default


def video_object(job: dict, store) -> Video:
    status = job.get("status", "queued")
    error = None
    if job.get("error_code"):
        error = VideoError(code=job["error_code"], message=job.get("error_message", ""))
    routing = json.loads(job["routing"]) if job.get("routing") else None
    return Video(
        id=job["id"], created_at=_int(job.get("created_at"), 0), completed_at=_int(job.get("completed_at")),
        expires_at=_int(job.get("expires_at")), model=job.get("model", ""), status=status,
        progress=_int(job.get("progress"), 0), prompt=job.get("prompt"), seconds=job.get("seconds", "0"),
        size=job.get("size", ""), error=error, seed=_int(job.get("seed")), num_frames=_int(job.get("num_frames")),
        fps=_int(job.get("fps")), num_inference_steps=_int(job.get("num_inference_steps")),
        step=_int(job.get("step")), attempts=_int(job.get("attempts"), 0),
        queue_position=store.queue_position(job["id"]) if status == "queued" else None,
        image_to_video=job.get("has_image") == "1", routing=routing,
        residency=json.loads(job["residency"]) if job.get("residency") else None)


def _owned_job(request: Request, video_id: str, owner: str) -> dict:
    """The job if it exists, belongs to this key and has not expired; else 404."""
    st = request.app.state
    job = st.store.get(video_id) if _valid_id(video_id) else None
    if not job or job.get("owner") != owner:
        raise not_found(video_id)
    exp = _int(job.get("expires_at"))
    if exp is not None and exp <= time.time():
        st.store.delete(video_id, st.settings.job_ttl_s)
        st.artifacts.remove(video_id)
        raise not_found(video_id)
    return job


def _valid_id(video_id: str) -> bool:
    return re.match(JOB_ID_RE, video_id) is not None


def _validation_error(exc: ValidationError) -> APIError:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    if err.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if err.get("type") == "extra_forbidden":
        return APIError(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    return APIError(400, f"Invalid value for '{param}': {err.get('msg')}.", param=param, code="invalid_value")


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


async def _read_body(request: Request, settings) -> tuple[dict, bytes | None]:
    ctype = request.headers.get("content-type", "").lower()
    length = _int(request.headers.get("content-length"))
    limit = settings.max_upload_bytes + FORM_FIELD_LIMIT
    if length is not None and length > limit:
        raise _too_large(length, settings.max_upload_bytes)
    request = _limited(request, limit, settings.max_upload_bytes)
    image: bytes | None = None
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=2, max_fields=64, max_part_size=FORM_FIELD_LIMIT)
        except APIError:
            raise
        except Exception as exc:
            raise APIError(400, f"Could not parse the form body: {exc}", code="invalid_body") from None
        fields: dict = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "input_reference":
                    raise APIError(400, f"Unexpected file field '{key}'.", param=key, code="unknown_parameter")
                image = await value.read(settings.max_upload_bytes + 1)
            elif key.startswith("input_reference["):  # {"image_url": ...} sent as form fields
                if key == "input_reference[image_url]":
                    image = _decode_data_url(value)
                else:
                    raise APIError(400, "input_reference by file_id is not supported; upload the image.",
                                   param="input_reference", code="unsupported")
            elif value != "" or key == "prompt":
                fields[key] = value
        await form.close()
        return fields, image
    if ctype.startswith("application/json") or not ctype:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise APIError(400, "The body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "The JSON body must be an object.", code="invalid_json")
        ref = body.pop("input_reference", None)
        if isinstance(ref, dict) and ref.get("image_url"):
            image = _decode_data_url(ref["image_url"])
        elif ref is not None:
            raise APIError(400, "input_reference in JSON must be {\"image_url\": \"data:...;base64,...\"}; or send "
                                "multipart/form-data with an image file.", param="input_reference", code="unsupported")
        return body, image
    raise APIError(415, f"Unsupported content type '{ctype}'; send multipart/form-data or application/json.",
                   code="unsupported_media_type")


def _frames_for_seconds(seconds: float, fps: int, limits) -> int:
    tc = limits.temporal_compression
    frames = max(0, round(seconds * fps / tc)) * tc + 1
    if frames > limits.max_frames:
        raise APIError(400, f"seconds={seconds:g} at {fps} fps needs {frames} frames; this model makes at most "
                            f"{limits.max_frames} ({(limits.max_frames - 1) / fps:g} s).", param="seconds",
                       code="invalid_value")
    return frames


# ---- routes --------------------------------------------------------------------------------------
@router.post("/videos", response_model=Video)
async def create_video(request: Request, owner: str = Depends(require_owner),
                       idempotency_key: str | None = Header(default=None, alias="Idempotency-Key")):
    st = request.app.state
    settings, manifest = st.settings, st.manifest
    raw, image_bytes = await _read_body(request, settings)
    try:
        body = CreateVideo.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if body.model not in (None, manifest.name):
        raise APIError(400, f"The model '{body.model}' does not exist; this server serves '{manifest.name}'.",
                       param="model", code="model_not_found")
    image = None
    if image_bytes is not None:
        image = load_image(image_bytes, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
    fps = body.fps if body.fps is not None else manifest.sampling.fps
    num_frames = body.num_frames
    if num_frames is None and body.seconds is not None:
        num_frames = _frames_for_seconds(body.seconds, fps if isinstance(fps, int) and fps > 0 else 1, manifest.limits)
    routing = body.routing or ("schedule" if body.expert_schedule else "fixed" if body.expert is not None else "top_k")
    gen = GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, image=image, num_frames=num_frames,
        size=body.size, fps=body.fps, num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale, image_guidance_scale=body.image_guidance_scale,
        guidance_oscillation=body.guidance_oscillation, seed=body.seed, top_k=body.top_k, routing=routing,
        expert=body.expert, expert_schedule=body.expert_schedule)
    try:
        r = resolve(manifest, gen)
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from None
    fields = {
        "model": manifest.name, "prompt": body.prompt, "request": r.to_json(), "seed": r.seed,
        "num_frames": r.num_frames, "fps": r.fps, "size": r.size, "num_inference_steps": r.num_inference_steps,
        "seconds": f"{(r.num_frames - 1) / r.fps:g}" if r.num_frames > 1 else "0",
        "has_image": "1" if image is not None else "0"}
    job_id = new_job_id()
    if image is not None:
        path = st.artifacts.input_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(image.save, path, "PNG")
    outcome, existing = await run_in_threadpool(
        st.store.enqueue, job_id, owner, fields, max_active=settings.max_active_jobs_per_key,
        idempotency_key=idempotency_key, idem_ttl_s=settings.job_ttl_s)
    if outcome != "created" and image is not None:
        st.artifacts.remove(job_id)
    if outcome == "limit":
        raise APIError(429, f"This key already has {settings.max_active_jobs_per_key} queued or running jobs; "
                            "wait for one to finish.", code="too_many_queued_jobs",
                       headers={"Retry-After": str(max(1, settings.poll_after_ms // 1000 * 5))})
    job_id = existing if outcome == "existing" else job_id
    log.info(json.dumps({"event": "job_created" if outcome == "created" else "job_idempotent_hit", "job": job_id,
                         "owner": owner, "frames": r.num_frames, "size": r.size, "steps": r.num_inference_steps}))
    return video_object(st.store.get(job_id), st.store)


@router.get("/videos", response_model=VideoList)
def list_videos(request: Request, owner: str = Depends(require_owner), after: str | None = None,
                limit: int = Query(default=20, ge=1, le=100), order: str = Query(default="desc", pattern="^(asc|desc)$")):
    st = request.app.state
    jobs, has_more = st.store.list(owner, after=after, limit=limit, order=order)
    data = [video_object(j, st.store) for j in jobs]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


@router.get("/videos/{video_id}", response_model=Video)
def retrieve_video(video_id: str, request: Request, response: Response, owner: str = Depends(require_owner)):
    st = request.app.state
    job = _owned_job(request, video_id, owner)
    response.headers["openai-poll-after-ms"] = str(st.settings.poll_after_ms)
    return video_object(job, st.store)


@router.get("/videos/{video_id}/trace")
def video_trace(video_id: str, request: Request, owner: str = Depends(require_owner)):
    job = _owned_job(request, video_id, owner)
    if job.get("status") != "completed":
        raise APIError(404, f"Video '{video_id}' has no routing trace yet (status {job.get('status')}).",
                       param="video_id", code="video_not_ready")
    return {"id": video_id, "object": "video.trace", "routing": json.loads(job.get("routing") or "null"),
            "steps": json.loads(job.get("trace") or "[]")}


@router.get("/videos/{video_id}/content")
def video_content(video_id: str, request: Request, owner: str = Depends(require_owner),
                  variant: str = Query(default="video", pattern="^(video|thumbnail|spritesheet)$")):
    st = request.app.state
    job = _owned_job(request, video_id, owner)
    if job.get("status") != "completed":
        raise APIError(404, f"Video '{video_id}' is not ready (status {job.get('status')}, "
                            f"progress {job.get('progress', 0)}%).", param="video_id", code="video_not_ready")
    path = st.artifacts.variant_path(video_id, int(job["artifact_fence"]), variant)
    if not path.is_file():
        raise APIError(404, f"The {variant} of video '{video_id}' is missing from the artifact store.",
                       param="variant", code="video_not_ready")
    ext = VARIANTS[variant][0].rsplit(".", 1)[1]
    return FileResponse(path, media_type=VARIANTS[variant][1], filename=f"{video_id}.{ext}")


@router.post("/videos/{video_id}/cancel", response_model=Video)
def cancel_video(video_id: str, request: Request, owner: str = Depends(require_owner)):
    st = request.app.state
    job = _owned_job(request, video_id, owner)
    prev = st.store.cancel(video_id, st.settings.job_ttl_s)
    if prev in ("completed", "failed"):
        raise APIError(409, f"Video '{video_id}' already finished (status {prev}); nothing to cancel.",
                       param="video_id", code="video_already_finished")
    log.info(json.dumps({"event": "job_cancelled", "job": video_id, "was": prev}))
    return video_object(st.store.get(video_id) or job, st.store)


@router.delete("/videos/{video_id}", response_model=VideoDeleted)
def delete_video(video_id: str, request: Request, owner: str = Depends(require_owner)):
    st = request.app.state
    _owned_job(request, video_id, owner)
    prev = st.store.delete(video_id, st.settings.job_ttl_s)
    st.artifacts.remove(video_id)
    log.info(json.dumps({"event": "job_deleted", "job": video_id, "was": prev}))
    return VideoDeleted(id=video_id)
