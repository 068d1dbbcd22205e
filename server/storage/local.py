"""Artifacts in a local directory (shared by the API and the workers)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from ..errors import APIError

from . import INPUT, VARIANTS, StorageError, attempt_part, download_name, job_part, render

if TYPE_CHECKING:
    from pipeline.results import GenerationResult


def check_range(range_header: str, size: int) -> None:
    """A Range header FileResponse would refuse, refused first as a JSON error naming Range
    (FileResponse answers those in plain text)."""
    try:
        FileResponse._parse_range_header(range_header, size)
    except MalformedRangeHeader as exc:
        raise APIError(400, f"Invalid Range header: {exc.content}", param="Range", code="invalid_range") from None
    except RangeNotSatisfiable:
        raise APIError(416, f"The Range asks for bytes past the end of the file ({size} bytes).", param="Range",
                       code="range_not_satisfiable", headers={"Content-Range": f"bytes */{size}"}) from None


class LocalArtifacts:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.root / job_part(job_id)

    def _attempt_dir(self, job_id: str, fence: int) -> Path:
        return self._job_dir(job_id) / attempt_part(fence)

    def check(self) -> None:
        # a real write, flushed: a full disk passes an access() check
        probe = self.root / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"paris storage probe\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StorageError(f"the artifact directory cannot be written: {exc.strerror or exc}") from None
        finally:
            probe.unlink(missing_ok=True)

    def write_input(self, job_id: str, image: Image.Image) -> None:
        try:
            self._job_dir(job_id).mkdir(parents=True, exist_ok=True)
            image.save(self._job_dir(job_id) / INPUT, "PNG")
        except OSError as exc:
            raise StorageError(f"could not store the first frame: {exc.strerror or exc}") from exc

    def read_input(self, job_id: str) -> Image.Image:
        try:
            with Image.open(self._job_dir(job_id) / INPUT) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"could not read the first frame: {exc.strerror or exc}") from exc

    def write(self, job_id: str, fence: int, result: GenerationResult) -> None:
        try:
            render(result, self._attempt_dir(job_id, fence))
        except OSError as exc:
            raise StorageError(f"could not store the video: {exc.strerror or exc}") from exc

    def response(self, job_id: str, fence: int, variant: str, range_header: str | None) -> Response:
        filename, media_type = VARIANTS[variant]
        path = self._attempt_dir(job_id, fence) / filename
        if not path.is_file():
            raise FileNotFoundError(variant)
        if range_header is not None:
            check_range(range_header, path.stat().st_size)
        return FileResponse(path, media_type=media_type, filename=download_name(job_id, variant))  # answers Range

    def remove_attempt(self, job_id: str, fence: int) -> None:
        shutil.rmtree(self._attempt_dir(job_id, fence), ignore_errors=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
