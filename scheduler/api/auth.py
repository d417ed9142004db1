"""Who may call the read routes, the dashboard and the mutating routes.

With ``SCHEDULER_API_TOKEN`` set, a protected route needs ``Authorization: Bearer <token>`` or
the dashboard's session cookie. The cookie never holds the token: it is
``v1.<issued epoch s>.<base64url HMAC-SHA256(token, domain + issued)>``, valid for
:data:`SESSION_MAX_AGE_SECONDS` and for as long as the token is not changed (a new token ends
every session). Every comparison with a secret is constant-time (``hmac.compare_digest``).

Without a token nobody is asked, and the local stack binds to loopback only; a protected route
then also refuses a ``Host`` that does not name loopback, so a web page whose domain is made to
resolve to 127.0.0.1 (DNS rebinding) cannot read the API from a browser.

Mutating dashboard routes (POST) are protected against cross-site requests twice: the form
carries a CSRF token (an HMAC of the session under the token, or under a per-process key when
there is no token), and a request whose ``Origin`` is not this server's is refused. The session
cookie is also ``SameSite=Strict``, so another site's form never carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping
from enum import StrEnum
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from scheduler.db.store import Clock, system_clock
from scheduler.errors import CsrfRejected, Unauthorized

__all__ = [
    "SESSION_COOKIE",
    "SESSION_MAX_AGE_SECONDS",
    "Access",
    "ApiAuth",
    "host_name",
    "is_loopback_host",
]

SESSION_COOKIE = "scheduler_session"
SESSION_MAX_AGE_SECONDS = 12 * 3600
_SESSION_DOMAIN = b"scheduler.dashboard.session.v1\x00"
_CSRF_DOMAIN = b"scheduler.dashboard.csrf.v1\x00"
_HOST_HEADER = re.compile(
    r"(?:\[(?P<address>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?"
)


class Access(StrEnum):
    """What a route asks of its caller."""

    PUBLIC = "public"  # the webhook (its signature), health, the login form, static files
    API = "api"  # token or session; else 401 JSON with WWW-Authenticate
    PAGE = "page"  # token or session; else the dashboard's token form


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address, with or without brackets) is this machine:
    a loopback address, ``localhost`` or a name under ``.localhost`` (which resolvers and
    browsers keep on this machine, RFC 6761). A name that merely starts like a loopback
    address (``127.0.0.1.nip.io``) is anybody's."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or (name.endswith(".localhost") and len(name) > len(".localhost")):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name or address a ``Host`` header names, its port and brackets dropped; ``""`` for
    anything that is not ``name[:port]`` or ``[address][:port]`` (``a@b``, spaces, paths)."""
    found = _HOST_HEADER.fullmatch(header.strip())
    if found is None:
        return ""
    return found.group("address") or found.group("name")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def cookies_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's cookies by name (a malformed header counts as none)."""
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in cookie.items()}


class ApiAuth:
    def __init__(self, token: str | None, *, clock: Clock = system_clock) -> None:
        self._token = token.encode() if token else None
        self._clock = clock
        # Without a token, forms are signed by a key of this process: a form from before a
        # restart is refused (the page says to reload it) rather than trusted.
        self._csrf_key = self._token or secrets.token_bytes(32)

    @property
    def required(self) -> bool:
        return self._token is not None

    # -- the token and the session ------------------------------------------------------------

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison of ``candidate`` with the token (of digests, so that not
        even the token's length shows in the time taken)."""
        if self._token is None:
            return False
        given = hashlib.sha256(candidate.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(given, hashlib.sha256(self._token).digest())

    def _session_mac(self, issued: str) -> str:
        assert self._token is not None
        return _b64(hmac.new(self._token, _SESSION_DOMAIN + issued.encode(), "sha256").digest())

    def new_session(self) -> str:
        """A session cookie's value, issued now."""
        issued = str(self._clock() // 1000)
        return f"v1.{issued}.{self._session_mac(issued)}"

    def session_valid(self, value: str) -> bool:
        if self._token is None:
            return False
        version, _, rest = value.partition(".")
        issued, _, mac = rest.partition(".")
        if version != "v1" or not (issued.isascii() and issued.isdecimal() and len(issued) < 12):
            return False
        age = self._clock() // 1000 - int(issued)
        if not -60 <= age <= SESSION_MAX_AGE_SECONDS:
            return False
        return hmac.compare_digest(mac.encode(), self._session_mac(issued).encode())

    def session_of(self, headers: Mapping[str, str]) -> str | None:
        """The request's valid session cookie, if any."""
        value = cookies_of(headers).get(SESSION_COOKIE)
        return value if value is not None and self.session_valid(value) else None

    def session_cookie(self, value: str, *, secure: bool) -> str:
        flags = "; Secure" if secure else ""
        return (
            f"{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_MAX_AGE_SECONDS};"
            f" HttpOnly; SameSite=Strict{flags}"
        )

    def cleared_cookie(self, *, secure: bool) -> str:
        flags = "; Secure" if secure else ""
        return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{flags}"

    # -- the check of a protected route -------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> None:
        """Raise :class:`Unauthorized` unless the request may use a protected route."""
        if self._token is None:
            host = headers.get("host")
            if host is not None and not is_loopback_host(host_name(host)):
                # No token: only this machine's own names (see the module's docstring).
                raise Unauthorized(f"host {host[:100]!r} is not served without an API token")
            return
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            if self.token_matches(credentials.strip()):
                return
            raise Unauthorized("wrong API token")
        if self.session_of(headers) is not None:
            return
        raise Unauthorized("this route needs the API token: send Authorization: Bearer <token>")

    # -- cross-site request forgery -----------------------------------------------------------

    def csrf_token(self, headers: Mapping[str, str]) -> str:
        """The token a form of this request's page carries (bound to its session)."""
        session = (self.session_of(headers) or "").encode()
        return _b64(hmac.new(self._csrf_key, _CSRF_DOMAIN + session, "sha256").digest())

    def check_csrf(self, headers: Mapping[str, str], form_token: str | None) -> None:
        """Raise :class:`CsrfRejected` for a request from another origin or without the
        form's token."""
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return  # an API client: a browser never adds this header to a forged request
        origin = headers.get("origin")
        if origin is not None:
            host = headers.get("host", "")
            if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
                raise CsrfRejected("request from another origin refused")
        expected = self.csrf_token(headers)
        if not form_token or not hmac.compare_digest(form_token.encode(), expected.encode()):
            raise CsrfRejected("the form has expired or did not come from this page: reload it")
