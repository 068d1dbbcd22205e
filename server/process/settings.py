"""Server settings: environment variables with a `PARIS_` prefix, overridden by CLI flags. Every
value is checked when a command starts (server/process/cli.py turns a failure into one clear line and a
non-zero exit)."""

import re
from pathlib import Path

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from weights import DEFAULT_MODEL

_SHA256 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped secret or key must not end up in a log
    model_config = SettingsConfigDict(env_prefix="PARIS_", extra="ignore", hide_input_in_errors=True)

    # Where things live
    model: str = str(DEFAULT_MODEL)            # model folder served by the API and run by workers
    redis_url: str | None = None               # None: start an embedded Valkey (AOF on) in data_dir
    data_dir: Path = Path(".paris")            # embedded Valkey data + default artifact dir
    artifact_dir: Path | None = None           # default: data_dir / "artifacts"
    artifact_url: str | None = None            # s3://bucket/prefix: artifacts on S3-compatible storage instead
    artifact_presign_s: int = Field(0, ge=0)   # > 0: /content redirects to a presigned URL valid this long (S3)
    key_prefix: str = "paris"                  # namespace of every Redis key

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)        # plain keys (hashed at startup, never stored)
    api_key_file: Path | None = None            # more plain keys, one per line ('#' comments and blank lines skipped)
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # sha256 hex digests of keys
    operator_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # sha256 of operator keys:
                                                # when set, /metrics needs one of these (tenants' keys get a 403)
    allow_unauthenticated_public: bool = False  # bind beyond loopback without keys only when this is set
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)  # without keys: Host names answered
                                                # (default: host, localhost, 127.0.0.1, ::1; "*": any)
    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive within this
    body_timeout_s: float = Field(60.0, gt=0)    # ... and its body within this (408 otherwise)

    # Limits
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_image_side: int = Field(8192, ge=1)       # longest side of an uploaded first frame
    max_image_aspect_ratio: float = Field(16.0, ge=1)  # longer side / shorter side of an upload
    image_decode_concurrency: int = Field(2, ge=1)  # uploads decoded at once (in threads, off the event loop)
    max_active_jobs_per_key: int = Field(16, ge=0)  # queued + running jobs per key, or per client address
                                                    # when no keys are configured (429 beyond; 0: no limit)
    max_queued_jobs: int = Field(1024, ge=0)     # jobs waiting in the queue, all keys together: past it a
                                                # POST is a 429 with Retry-After (backpressure; 0: no limit)
    poll_after_ms: int = Field(1000, ge=0)
    max_event_streams_per_key: int = Field(8, ge=1)  # open /events streams per key (or client address without
                                                      # keys) in one API process; 429 beyond
    max_event_streams: int = Field(1000, ge=1)   # open /events streams in one API process; 503 beyond
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)  # networks whose
                                                # X-Forwarded-For names the client (the limit without keys)

    # Queue
    job_ttl_s: int = Field(24 * 3600, ge=1)     # finished records and files expire after this
    lease_ms: int = Field(30_000, ge=1000)      # a running job's lease; renewed every lease/3
    max_attempts: int = Field(3, ge=1)
    heartbeat_ttl_s: float = Field(15.0, gt=0)  # /ready needs a worker heartbeat younger than this

    # Worker
    worker_id: str | None = None
    device: str = "cpu"
    max_batch: int = Field(8, ge=1)
    device_memory: str | None = None            # device budget: "40GiB" or "0.8" of free memory; None: free (CUDA), no limit (CPU)
    host_memory: str | None = None              # pinned host copies ("256GiB"); None: 90% of the machine's RAM
    reserve: str | None = None                  # device memory held back; None: 5% of the device budget, at least 2GiB
    threads: int | None = Field(None, ge=1)     # torch CPU threads in the worker; None: torch's default
    max_wait: int = Field(24, ge=0)             # fairness bound input: see pipeline/engine.py (Scheduling)
    tick_delay_s: float = Field(0.0, ge=0)      # sleep after each denoising step (debugging / fault tests)
    max_job_seconds: float = Field(3600.0, gt=0)  # one attempt's run time before it fails with `timeout`
    artifact_writers: int = Field(2, ge=1)      # threads writing videos and settling jobs off the engine loop
    max_storage_retries: int = Field(10, ge=0)  # times a job goes back to the queue because storage failed

    # Webhooks: video.completed / video.failed, signed with the secret (README: "Playground, events and webhooks")
    webhook_secret: SecretStr | None = None     # whsec_<base64 key>; without it no webhook is sent or accepted
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)  # every job's events also go here
    webhook_allow_private: bool = False         # PARIS_WEBHOOK_URLS (the operator's own) may also be private and
                                                # loopback receivers (link-local stays refused); not a job's webhook_url
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)  # networks every
                                                # receiver may be in, a job's webhook_url too (e.g. 10.0.3.7/32)
    webhook_key_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)  # "<sha256 of a key>=whsec_...":
                                                # that key's jobs are signed with its own secret (default: webhook_secret)
    webhook_dns_server: str | None = None       # "10.0.0.2" or "10.0.0.2:5353": resolve receivers' names there
                                                # (UDP, each query time-limited) instead of the system resolver
    webhook_ca_file: Path | None = None         # trust this CA bundle for receivers (default: the public CAs)
    webhook_retry_base_s: float = Field(5.0, gt=0)  # first retry after about this, then doubling ...
    webhook_retry_max_s: float = Field(3600.0, gt=0)  # ... up to this
    webhook_max_attempts: int = Field(10, ge=1)

    # A worker group (pipeline/distributed): one worker over several devices, each expert's rows on the
    # devices holding it; rank r on group_devices[r] (under torchrun: its local rank's device)
    group_devices: Annotated[list[str], NoDecode] = Field(default_factory=list)
    group_timeout_s: float = Field(60.0, gt=0)  # a rank silent this long ends the group (README)
    group_stream_copies: bool = False           # also stream, on each device, the experts it does not hold whole

    # `paris serve`: its worker processes
    workers: int | None = Field(None, ge=1)     # default: one per device in `devices` (one when none are named)
    devices: Annotated[list[str], NoDecode] = Field(default_factory=list)  # worker i runs on devices[i % len]

    @field_validator("api_keys", "api_key_hashes", "devices", "group_devices", "webhook_urls", "trusted_proxies",
                     "webhook_allowed_networks", "webhook_key_secrets", "allowed_hosts", "operator_key_hashes",
                     mode="before")
    @classmethod
    def _comma_list(cls, v):
        # PARIS_API_KEYS="k1,k2" (comma separated) or a list from the CLI
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("webhook_dns_server")
    @classmethod
    def _dns_server(cls, v):
        from server.notify.webhooks.resolver import parse_server

        if v is not None:
            try:
                parse_server(v)
            except ValueError:
                raise ValueError("must be an IP address, optionally with :port (e.g. 10.0.0.2:53)") from None
        return v

    @field_validator("api_key_hashes", "operator_key_hashes")
    @classmethod
    def _hashes(cls, v):
        for digest in v:
            if not _SHA256.match(digest):
                raise ValueError("each entry must be a key's sha256 as 64 hex digits (optionally 'sha256:' first); "
                                 "make one with `printf %s KEY | sha256sum`")
        return v

    @field_validator("webhook_key_secrets")
    @classmethod
    def _key_secrets(cls, v):
        from server.notify.webhooks import WebhookSecret

        for entry in v:
            digest, sep, secret = entry.partition("=")
            if not sep or not _SHA256.match(digest):
                raise ValueError("each entry must be '<sha256 of an API key>=whsec_...'")
            WebhookSecret(secret)
        return v

    @field_validator("trusted_proxies", "webhook_allowed_networks")
    @classmethod
    def _networks(cls, v):
        from server.api.tenants import parse_networks

        parse_networks(v)
        return v

    @field_validator("device_memory", "host_memory", "reserve")
    @classmethod
    def _memory_size(cls, v):
        from pipeline.residency import parse_budget

        if v is not None:
            parse_budget(v, "cpu")  # a malformed value is a clear error at startup
        return v

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url(cls, v):
        if v is not None and (not v.startswith("s3://") or not v.removeprefix("s3://").split("/")[0]):
            raise ValueError("must look like s3://bucket or s3://bucket/prefix")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.artifact_url and self.artifact_dir:
            raise ValueError("give artifact_dir (a directory) or artifact_url (s3://...), not both")
        if self.webhook_key_secrets and self.webhook_secret is None:
            raise ValueError("PARIS_WEBHOOK_KEY_SECRETS needs PARIS_WEBHOOK_SECRET too (the default for other keys)")
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError("PARIS_WEBHOOK_URLS needs PARIS_WEBHOOK_SECRET (whsec_...) to sign its deliveries")
        if self.api_key_file is not None:
            try:
                self.plain_api_keys()
            except OSError as exc:
                raise ValueError(f"cannot read api_key_file {str(self.api_key_file)!r}: {exc.strerror}") from None
        return self

    def plain_api_keys(self) -> list[str]:
        """api_keys and the keys in api_key_file."""
        if self.api_key_file is None:
            return list(self.api_keys)
        lines = Path(self.api_key_file).read_text().splitlines()
        return self.api_keys + [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v):
        from server.notify.webhooks import WebhookSecret

        if v is not None:
            WebhookSecret(v.get_secret_value())  # a malformed secret is a clear error at startup
        return v

    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(self.data_dir) / "artifacts"
