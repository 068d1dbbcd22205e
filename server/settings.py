"""Server settings: environment variables with a `PARIS_` prefix, overridden by CLI flags."""

from pathlib import Path

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from weights import DEFAULT_MODEL


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped secret or key must not end up in a log
    model_config = SettingsConfigDict(env_prefix="PARIS_", extra="ignore", hide_input_in_errors=True)

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
    device_memory: str | None = None            # weights budget: "40GiB" or a fraction of free memory ("0.8"); None: no limit
    threads: int | None = None                  # torch CPU threads in the worker; None: torch's default
    max_wait: int = 24                          # fairness bound input: see pipeline/engine.py (Scheduling)
    tick_delay_s: float = 0.0                   # sleep after each denoising step (debugging / fault tests)

    # Webhooks: video.completed / video.failed, signed with the secret (README: "Playground, events and webhooks")
    webhook_secret: SecretStr | None = None     # whsec_<base64 key>; without it no webhook is sent or accepted
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)  # every job's events also go here
    webhook_allow_private: bool = False         # also private and loopback receivers (link-local stays refused)
    webhook_ca_file: Path | None = None         # trust this CA bundle for receivers (default: the public CAs)
    webhook_retry_base_s: float = 5.0           # first retry after about this, then doubling ...
    webhook_retry_max_s: float = 3600.0         # ... up to this
    webhook_max_attempts: int = 10

    @field_validator("api_keys", "api_key_hashes", "webhook_urls", mode="before")
    @classmethod
    def _comma_list(cls, v):
        # PARIS_API_KEYS="k1,k2" (comma separated) or a list from the CLI
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("device_memory")
    @classmethod
    def _device_memory(cls, v):
        from pipeline.residency import parse_budget

        if v is not None:
            parse_budget(v, "cpu")  # a malformed value is a clear error at startup
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v):
        from .webhooks import WebhookSecret

        if v is not None:
            WebhookSecret(v.get_secret_value())  # a malformed secret is a clear error at startup
        return v

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self):
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError("PARIS_WEBHOOK_URLS needs PARIS_WEBHOOK_SECRET (whsec_...) to sign its deliveries")
        return self

    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(self.data_dir) / "artifacts"
