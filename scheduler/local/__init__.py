"""The local runtime (``scheduler up``): DynamoDB Local, the HTTP server, the event source
mapping (stream runner, checkpoints, dead letters) and the process executor.

Nothing is imported here: each part is imported from its own module.
"""

__all__: list[str] = []
