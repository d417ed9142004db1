"""An idempotent CI/CD job scheduler driven by DynamoDB Streams."""

__all__: list[str] = []
