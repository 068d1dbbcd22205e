"""The worker's log: one JSON object a line on the `paris.worker` logger, each naming its event."""

import json
import logging

log = logging.getLogger("paris.worker")


def event(name: str, **kw) -> None:
    log.info(json.dumps({"event": name, **kw}, default=str))
