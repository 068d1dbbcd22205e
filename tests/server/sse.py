"""Reading Server-Sent Events in tests, frame by frame, as a browser's EventSource does."""

from __future__ import annotations

import json

import httpx


def parse(frame: str) -> dict:
    """One SSE frame: its fields (data parsed as JSON) and its comment lines."""
    out: dict = {"comment": []}
    for line in frame.strip("\n").split("\n"):
        name, _, value = line.partition(":")
        if name == "":
            out["comment"].append(value.strip())
        else:
            out[name] = value[1:] if value.startswith(" ") else value
    if "data" in out:
        out["data"] = json.loads(out["data"])
    return out


def read_events(url: str, key: str | None, last_event_id: str | None = None, limit: int | None = None,
                timeout: float = 60.0) -> list[dict]:
    """The event frames of GET url (retry hints and comments skipped), until the server ends the
    stream or `limit` events arrived (then the connection is dropped, as a flaky network would)."""
    headers = {"Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[dict] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                parsed = parse(frame)
                if "event" in parsed:
                    events.append(parsed)
                    if limit is not None and len(events) >= limit:
                        return events
    return events
