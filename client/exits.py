"""How the job commands end: one line on stderr naming the problem, and an exit code per kind of
problem, so that scripts can tell a server that is down from a job that does not exist.

    0  success
    1  the job failed (or was cancelled) on the server
    2  bad command line (argparse)
    3  cannot reach the server (refused, timed out, not HTTP)
    4  authentication: 401/403 (no key, or a wrong one)
    5  not found: 404 (unknown, expired, deleted or another key's job; a video not ready yet)
    6  invalid request: 400/413/415/422, with the field the server names
    7  conflict: 409 (e.g. cancelling a job that already finished)
    8  the server is busy: 429/503 (too many active jobs, queue or Redis unavailable)
    9  any other server error (5xx)
   10  a local file could not be read or written
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx

from .api import ParisError

OK, JOB_FAILED, USAGE, UNREACHABLE, AUTH, NOT_FOUND, INVALID, CONFLICT, BUSY, SERVER, LOCAL_FILE = range(11)


def exit_code(status: int) -> int:
    """The exit code for an HTTP error status."""
    if status in (401, 403):
        return AUTH
    if status == 404:
        return NOT_FOUND
    if status == 409:
        return CONFLICT
    if status in (429, 503):
        return BUSY
    if 400 <= status < 500:
        return INVALID
    return SERVER


def describe(exc: ParisError) -> str:
    where = f" {exc.param}:" if exc.param else ""
    message = exc.error.get("message") or ""
    hint = " (pass --api-key or set PARIS_API_KEY)" if exc.status == 401 else ""
    return f"{exc.status} {exc.code or 'error'}:{where} {message}{hint}"


def run_reporting(command: str, server: str, run: Callable[[], int]) -> int:
    """`run()`'s exit code; a ParisError, a network error or a file error becomes one line on
    stderr and its exit code, never a traceback."""
    try:
        return run()
    except ParisError as exc:
        print(f"paris {command}: {describe(exc)}", file=sys.stderr)
        return exit_code(exc.status)
    except httpx.TimeoutException as exc:
        print(f"paris {command}: {server} did not answer in time ({type(exc).__name__})", file=sys.stderr)
        return UNREACHABLE
    except httpx.TransportError as exc:
        print(f"paris {command}: cannot reach the server at {server} ({exc or type(exc).__name__}); "
              "is `paris serve` running there? (--server or PARIS_SERVER)", file=sys.stderr)
        return UNREACHABLE
    except ValueError as exc:  # a 2xx whose body is not JSON: something else answers at that address
        print(f"paris {command}: the answer from {server} is not a Paris server's ({exc})", file=sys.stderr)
        return SERVER
    except OSError as exc:
        print(f"paris {command}: {exc}", file=sys.stderr)
        return LOCAL_FILE
    except KeyboardInterrupt:
        print(f"paris {command}: interrupted", file=sys.stderr)
        return 130
