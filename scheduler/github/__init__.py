"""GitHub's side: signatures and payloads (pure), a delivery made a job, commit statuses, the
GitHub App. Import the module you need: nothing is imported here, so a function that verifies
deliveries does not load the HTTP client that only statuses and check runs use."""

__all__: list[str] = []
