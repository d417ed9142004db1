"""One Lambda execution environment: a process that imports its handler once (the init phase)
and then answers invocations one at a time, as Lambda's runtime does.

Protocol (the harness's stand-in for the Runtime API): one JSON line per invocation on stdin,
``{"event": ..., "deadline_ms": ...}``; one JSON line back on the process's original stdout,
``{"result": ...}`` or ``{"error": type, "message": ...}``. Anything the handler prints goes to
stderr (the function's log), so it cannot corrupt an answer.

Usage: ``python lambda_worker.py scheduler.aws.handlers.stream``
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any


class Context:
    """The two members of Lambda's context object the handlers read."""

    def __init__(self, deadline_ms: int, name: str) -> None:
        self._deadline_ms = deadline_ms
        self.function_name = name
        self.aws_request_id = f"req-{time.time_ns()}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def main() -> None:
    handler_path = sys.argv[1]
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the handler's prints and logs go to the function's log
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    module, name = handler_path.rsplit(".", 1)
    handler: Any = getattr(importlib.import_module(module), name)
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        context = Context(int(request["deadline_ms"]), handler_path)
        try:
            reply: dict[str, Any] = {"result": handler(request["event"], context)}
        except Exception as exc:  # Lambda reports an unhandled error as a function error
            logging.getLogger(handler_path).exception("invocation failed")
            reply = {"error": type(exc).__name__, "message": str(exc)[:500]}
        answers.write(json.dumps(reply, default=str) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
