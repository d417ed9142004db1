"""``POST /webhook`` with hostile payloads, validly signed or not (see the package's docstring)."""

from __future__ import annotations

from harness import SECRET
from hypothesis import given

from hostile_input.payloads import (
    BAD_SIGNATURES,
    WebhookSpec,
    badly_signed_deliveries,
    delivered_document,
    get_path,
    signed_deliveries,
    what_was_asked,
)
from hostile_input.world import UNSIGNED_OWNER, World, hypothesis_settings, show
from scheduler.github.signature import sign


def test_validly_signed_deliveries_with_hostile_payloads_get_2xx_or_4xx_and_no_stray_job(
    world: World,
) -> None:
    @hypothesis_settings("signed_payloads")
    @given(spec=signed_deliveries())
    def deliver(spec: WebhookSpec) -> None:
        delivery, sha = world.fresh()
        body = spec.body.render(sha)
        delivery_header = spec.delivery if spec.delivery is not None else delivery
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", spec.body.content_type),
            ("X-GitHub-Event", spec.event),
            ("X-GitHub-Delivery", delivery_header),
            ("X-Hub-Signature-256", sign(SECRET.encode(), body)),
        ]
        answer = world.post("/webhook", body, headers)
        request = f"headers {headers!r} body ".encode() + body
        world.check(request, [answer])
        world.book(request, [answer], what_was_asked(spec.event, spec.body.content_type, body))

    with world.measured("signed_payloads"):
        deliver()


def test_deliveries_without_a_valid_signature_are_401_and_make_nothing(world: World) -> None:
    @hypothesis_settings("bad_signatures")
    @given(case=badly_signed_deliveries())
    def deliver(case: tuple[WebhookSpec, str, str | None]) -> None:
        spec, mode, garbage = case
        delivery, sha = world.fresh()
        body = spec.body.render(sha)
        signatures = [garbage] if garbage is not None else BAD_SIGNATURES[mode](body)
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", spec.body.content_type),
            ("X-GitHub-Event", spec.event),
            ("X-GitHub-Delivery", delivery),
            *(("X-Hub-Signature-256", value) for value in signatures),
        ]
        request = f"signature {mode}: headers {headers!r} body ".encode() + body
        repo = get_path(delivered_document(spec.body.content_type, body), "repository.full_name")
        if isinstance(repo, str) and repo.startswith(f"{UNSIGNED_OWNER}/"):
            world.unsigned_repos.add(repo)
        answer = world.post("/webhook", body, headers)
        world.check(request, [answer])
        world.book(request, [answer], None)
        # The signature is checked first: whatever else is wrong, the answer is about it.
        assert answer.status == 401, f"PRODUCT BUG: not refused 401: {show(request)} -> {answer}"
        assert "X-Hub-Signature-256" in (answer.message or ""), f"{show(request)} -> {answer}"

    with world.measured("bad_signatures"):
        deliver()
