"""Server settings: environment variables with a `PARIS_` prefix, overridden by CLI flags."""

from pathlib import Path

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from weights import DEFAULT_MODEL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARIS_", extra="ignore")

    # Where things live
    model: str = str(DEFAULT_MODEL)            # model folder served by the API and run by workers
    redis_url: str | None = None               # None: start an embedded Valkey (AOF on) in data_dir
    data_dir: Path = Path(".paris")            # embedded Valkey data + default artifact dir
    artifact_dir: Path | None = None           # default: data_dir / "artifacts"
    key_prefix: str = "paris"                  # namespace of every Redis key

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)        # plain keys (hashed at startup, never stored)
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # sha256 hex digests of keys
    allow_unauthenticated_public: bool = False  # bind beyond loopback without keys only when this is set

    # Limits
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_active_jobs_per_key: int = 16           # queued + running jobs per key (429 beyond)
    poll_after_ms: int = 1000

    # Queue
    job_ttl_s: int = 24 * 3600                  # finished records and files expire after this
    lease_ms: int = 30_000                      # a running job's lease; renewed every lease/3
    max_attempts: int = 3
    heartbeat_ttl_s: float = 15.0               # /ready needs a worker heartbeat younger than this

    # Worker
    worker_id: str | None = None
    device: str = "cpu"
    max_batch: int = 8
    device_memory: str | None = None            # device budget: "40GiB" or "0.8" of free memory; None: free (CUDA), no limit (CPU)
    host_memory: str | None = None              # pinned host copies ("256GiB"); None: 90% of the machine's RAM
    reserve: str | None = None                  # device memory held back; None: 5% of the device budget, at least 2GiB
    threads: int | None = None                  # torch CPU threads in the worker; None: torch's default
    max_wait: int = 24                          # fairness bound input: see pipeline/engine.py (Scheduling)
    tick_delay_s: float = 0.0                   # sleep after each denoising step (debugging / fault tests)
    max_job_seconds: float = Field(3600.0, gt=0)  # one attempt's run time before it fails with `timeout`
    artifact_writers: int = Field(2, ge=1)      # threads writing videos and settling jobs off the engine loop
    max_storage_retries: int = Field(10, ge=0)  # times a job goes back to the queue because storage failed

    @field_validator("api_keys", "api_key_hashes", mode="before")
    @classmethod
    def _comma_list(cls, v):
        # PARIS_API_KEYS="k1,k2" (comma separated) or a list from the CLI
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("device_memory", "host_memory", "reserve")
    @classmethod
    def _memory_size(cls, v):
        from pipeline.residency import parse_budget

        if v is not None:
            parse_budget(v, "cpu")  # a malformed value is a clear error at startup
        return v

    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(self.data_dir) / "artifacts"
