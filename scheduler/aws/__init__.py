"""The AWS runtime: Lambda entry points (``handlers``), CodeBuild runs, AWS clients.

Nothing is imported here: a Lambda cold start loads only what its handler needs.
"""

__all__: list[str] = []
