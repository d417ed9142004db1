"""GitHub's webhook signature: HMAC-SHA256 of the raw body in ``X-Hub-Signature-256`` (pure)."""

from __future__ import annotations

import hashlib
import hmac
import re

from scheduler.errors import SignatureInvalid

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

SIGNATURE_HEADER = "x-hub-signature-256"
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise :class:`SignatureInvalid` unless ``header`` is the HMAC-SHA256 of ``body``.

    The comparison is constant-time (``hmac.compare_digest``), so the answer time tells an
    attacker nothing about how much of a guess was right.
    """
    if header is None or not header.strip():
        raise SignatureInvalid("missing X-Hub-Signature-256 header")
    if _SIGNATURE.fullmatch(header.strip().lower()) is None:
        raise SignatureInvalid("malformed X-Hub-Signature-256 header: expected sha256=<64 hex>")
    if not hmac.compare_digest(sign(secret, body), header.strip().lower()):
        raise SignatureInvalid("X-Hub-Signature-256 does not match the body")
