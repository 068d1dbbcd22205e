"""The job record: Job.from_hash / to_hash are exact inverses, a stored hash (including one an
older version wrote) maps to the same Video object users got before, and a completed job gains
the routing fields users read."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.request import ResolvedRequest, RoutingMode
from pipeline.results import ComputeCounts, GenerationResult, ResidencyDelta, TraceStep
from pipeline.routing import Choice, RoutingTrace
from server.queue.jobs import GROUP, Job, JobStatus, Keys, completion, hash_args
from server.queue.results import Residency, Routing
from server.api.schemas import Video, VideoTrace

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = "video_0123456789abcdef0123456789abcdef"
REQUEST = ResolvedRequest(prompt="a red circle moving left", negative_prompt="", image=None, num_frames=9, width=32,
                          height=32, fps=8, num_inference_steps=4, guidance_scale=5.0, image_guidance_scale=1.0,
                          guidance_oscillation=False, seed=42, routing=RoutingMode.TOP_K, top_k=2, expert=None)
ROUTING = {"policy": "top_k", "top_k": 2, "step_share": {"0": 0.5, "1": 1.0, "2": 0.5},
           "expert_share": {"0": 0.5, "1": 1.0, "2": 0.5}, "weight_share": {"0": 0.3, "1": 0.55, "2": 0.15},
           "steps": 4, "trace_url": f"/v1/videos/{JOB_ID}/trace"}
RESIDENCY = {"expert_loads_while_running": 3, "bytes_to_device_while_running": 123456, "max_waited_ticks": 1}
TRACE = [{"step": 0, "t": 1.0, "experts": [1, 0], "weights": [0.6, 0.4]}]

# A completed job's hash as the server before typed jobs wrote it (queue_seq, started_at,
# total_steps and seconds are no longer written; a record keeping them must still read).
OLD_COMPLETED_HASH = {
    "id": JOB_ID, "owner": "public", "created_at": "1700000000", "model": "paris-mini",
    "prompt": "a red circle moving left", "request": REQUEST.to_json(), "seed": "42", "num_frames": "9", "fps": "8",
    "size": "32x32", "num_inference_steps": "4", "seconds": "1", "has_image": "0", "queue_seq": "3", "fence": "2",
    "attempts": "2", "progress": "100", "status": "completed", "entry_id": "1700000000000-0",
    "started_at": "1700000005", "step": "4", "total_steps": "4", "completed_at": "1700000009",
    "expires_at": "1700086409", "artifact_fence": "2", "routing": json.dumps(ROUTING), "trace": json.dumps(TRACE),
    "residency": json.dumps(RESIDENCY)}


def completed_job() -> Job:
    return Job(id=JOB_ID, owner="public", model="paris-mini", created_at=1700000000, request=REQUEST.to_json(),
               prompt="a red circle moving left", seed=42, num_frames=9, fps=8, size="32x32", num_inference_steps=4,
               has_image=False, status=JobStatus.COMPLETED, entry_id="1700000000000-0", fence=2, attempts=2,
               progress=100, step=4, completed_at=1700000009, expires_at=1700086409, artifact_fence=2,
               routing=Routing(**ROUTING), trace=[TraceStep(**s) for s in TRACE], residency=Residency(**RESIDENCY))


def test_to_hash_writes_each_field_as_text_and_from_hash_reads_it_back():
    job = completed_job()
    h = job.to_hash()
    legacy_only = {"queue_seq", "started_at", "total_steps", "seconds"}
    assert h == {k: v for k, v in OLD_COMPLETED_HASH.items() if k not in legacy_only}
    assert Job.from_hash(h) == job
    assert Job.from_hash(OLD_COMPLETED_HASH) == job


def test_a_queued_job_round_trips_with_its_unset_fields_absent():
    job = Job.new("video_" + "f" * 32, "owner1", "tiny", REQUEST)
    h = job.to_hash()
    assert h["status"] == "queued" and h["fence"] == "0" and h["has_image"] == "0" and h["seed"] == "42"
    assert not {"step", "worker", "completed_at", "routing", "error_code"} & h.keys()
    back = Job.from_hash(h)
    assert back == job and back.step is None and back.status is JobStatus.QUEUED
    assert ResolvedRequest.from_json(back.request) == REQUEST


def test_hash_args_refuses_names_that_are_not_job_fields():
    assert hash_args(progress=12, step=3, worker=None) == ["progress", "12", "step", "3"]
    with pytest.raises(KeyError, match="total_steps"):
        hash_args(progress=12, total_steps=4)


def test_a_completed_job_is_the_same_video_object_as_before():
    expected = {
        "id": JOB_ID, "object": "video", "created_at": 1700000000, "completed_at": 1700000009,
        "expires_at": 1700086409, "model": "paris-mini", "status": "completed", "progress": 100,
        "prompt": "a red circle moving left", "seconds": "1", "size": "32x32", "error": None,
        "remixed_from_video_id": None, "seed": 42, "num_frames": 9, "fps": 8, "num_inference_steps": 4, "step": 4,
        "queue_position": None, "attempts": 2, "image_to_video": False, "routing": ROUTING, "residency": RESIDENCY,
        "compute": None,  # a record written before jobs counted their expert work
        "webhooks": None}
    video = Video.from_job(Job.from_hash(OLD_COMPLETED_HASH))
    assert video.model_dump(mode="json") == expected
    assert list(video.model_dump(mode="json")) == list(expected)  # field order too


def test_a_failed_job_shows_its_error_and_a_queued_one_its_position():
    failed = Job.from_hash({**OLD_COMPLETED_HASH, "status": "failed", "error_code": "cancelled",
                            "error_message": "The job was cancelled."})
    v = Video.from_job(failed).model_dump(mode="json")
    assert v["status"] == "failed" and v["error"] == {"code": "cancelled", "message": "The job was cancelled."}
    queued = Job.new(JOB_ID, "public", "paris-mini", REQUEST)
    v = Video.from_job(queued, queue_position=3).model_dump(mode="json")
    assert (v["status"], v["queue_position"], v["progress"], v["step"], v["seconds"]) == ("queued", 3, 0, None, "1")


def test_completion_fields_name_step_and_weight_share():
    trace = RoutingTrace()
    trace.record(0, 1.0, Choice((1, 0), (0.75, 0.25)))
    trace.record(1, 0.5, Choice((1, 2), (0.5, 0.5)))
    result = GenerationResult(frames=np.zeros((9, 32, 32, 3), np.uint8), request=REQUEST, trace=trace,
                              routing=trace.summary(3), residency=ResidencyDelta(2, 1000, 1),
                              compute=ComputeCounts(6, 2, 12, 8))
    share = {"0": 0.5, "1": 1.0, "2": 0.5}  # expert 1 ran in both steps, 0 and 2 in one each
    assert completion(JOB_ID, result) == {
        "progress": 100, "step": 4,
        "routing": Routing(**{"policy": "top_k", "top_k": 2, "step_share": share, "expert_share": share,
                              "weight_share": {"0": 0.125, "1": 0.625, "2": 0.25}, "steps": 2,
                              "trace_url": f"/v1/videos/{JOB_ID}/trace"}),
        "trace": trace.steps,
        "residency": Residency(**{"expert_loads_while_running": 2, "bytes_to_device_while_running": 1000,
                                  "max_waited_ticks": 1}),
        "compute": ComputeCounts(**{"row_forwards": 6, "row_forwards_skipped": 2, "block_forwards": 12,
                                    "block_forwards_skipped": 8})}


def test_keys_and_group_keep_their_names():  # a running deployment's Redis holds these
    k = Keys("t1")
    assert GROUP == "workers"
    assert (k.job(JOB_ID), k.stream, k.queued, k.expiry, k.workers, k.metrics) == (
        f"t1:job:{JOB_ID}", "t1:jobs", "t1:queued", "t1:expiry", "t1:workers", "t1:metrics")
    assert (k.owner_jobs("o"), k.owner_active("o"), k.idempotency("o", "x")) == (
        "t1:owner:o:jobs", "t1:owner:o:active", "t1:idem:o:x")


def test_completion_fields_are_stored_as_the_json_the_server_wrote_before():
    """Typed records on the job, the same bytes in the hash: each record's JSON is the dict
    a client has always read, in its order."""
    trace = RoutingTrace()
    trace.record(0, 1.0, Choice((1, 0), (0.75, 0.25)))
    result = GenerationResult(frames=np.zeros((9, 32, 32, 3), np.uint8), request=REQUEST, trace=trace,
                              routing=trace.summary(3), residency=ResidencyDelta(2, 1000, 1),
                              compute=ComputeCounts(6, 2, 12, 8))
    args = hash_args(**completion(JOB_ID, result))
    stored = dict(zip(args[::2], args[1::2], strict=True))
    share = {"0": 1.0, "1": 1.0, "2": 0.0}
    assert stored["routing"] == json.dumps({"policy": "top_k", "top_k": 2, "step_share": share, "expert_share": share,
                                            "weight_share": {"0": 0.25, "1": 0.75, "2": 0.0}, "steps": 1,
                                            "trace_url": f"/v1/videos/{JOB_ID}/trace"})
    assert stored["trace"] == json.dumps([{"step": 0, "t": 1.0, "experts": [1, 0], "weights": [0.75, 0.25]}])
    assert stored["residency"] == json.dumps({"expert_loads_while_running": 2, "bytes_to_device_while_running": 1000,
                                              "max_waited_ticks": 1})
    assert stored["compute"] == json.dumps({"row_forwards": 6, "row_forwards_skipped": 2, "block_forwards": 12,
                                            "block_forwards_skipped": 8})
    job = Job.from_hash({**OLD_COMPLETED_HASH, **stored})
    assert isinstance(job.routing, Routing) and isinstance(job.residency, Residency)
    assert job.trace == [TraceStep(step=0, t=1.0, experts=[1, 0], weights=[0.75, 0.25])]
    assert job.compute == ComputeCounts(6, 2, 12, 8)


def test_the_trace_response_is_the_object_it_was():
    job = Job.from_hash(OLD_COMPLETED_HASH)
    body = VideoTrace(id=JOB_ID, routing=job.routing, steps=job.trace).model_dump(mode="json")
    assert body == {"id": JOB_ID, "object": "video.trace", "routing": ROUTING, "steps": TRACE}
    assert list(body) == ["id", "object", "routing", "steps"]


@pytest.mark.filterwarnings("ignore:Duplicate Operation ID")  # /content's GET and HEAD share one function
def test_the_openapi_schema_documents_the_result_records(tiny_model_dir, tmp_path):
    """/openapi.json names each result's fields (no bare objects): the Video's routing,
    residency and compute, and the trace's steps."""
    from server.api.app import create_app
    from server.process.settings import Settings

    app = create_app(Settings(model=str(tiny_model_dir), artifact_dir=tmp_path), "redis://127.0.0.1:1")
    schema = app.openapi()
    defs = schema["components"]["schemas"]
    video = defs["Video"]["properties"]
    refs = {name: json.dumps(video[name]) for name in ("routing", "residency", "compute")}
    assert all(f"#/components/schemas/{ref}" in refs[name]
               for name, ref in [("routing", "Routing"), ("residency", "Residency"), ("compute", "ComputeCounts")])
    assert list(defs["Routing"]["properties"]) == list(ROUTING)
    assert list(defs["Residency"]["properties"]) == list(RESIDENCY)
    assert list(defs["ComputeCounts"]["properties"]) == ["row_forwards", "row_forwards_skipped", "block_forwards",
                                                         "block_forwards_skipped"]
    assert list(defs["TraceStep"]["properties"]) == list(TRACE[0])
    trace = schema["paths"]["/v1/videos/{video_id}/trace"]["get"]["responses"]["200"]
    assert trace["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VideoTrace"}


def test_the_result_records_load_without_torch():
    """The queue and the API read the engine's result records (pipeline/results.py) at run time:
    that module, and so the API process, stays torch-free."""
    code = "import sys, server.queue.jobs, server.api.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
