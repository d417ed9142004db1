"""A GitHub App's credentials: its JWT (RS256) and the installation tokens it buys.

An App authenticates as itself with a JSON Web Token signed by its private key (at most ten
minutes long; ``iat`` set a minute back against clock drift, as GitHub's guide advises), and
acts on a repository with an installation token (one hour) bought with that JWT:
``POST /app/installations/{id}/access_tokens``. Tokens are cached per installation until
:data:`REFRESH_MARGIN_SECONDS` before they expire; one lock per installation makes concurrent
callers buy one token, not one each. Which installation serves a repository is learnt from a
delivery's ``installation.id`` or asked of ``GET /repos/{owner}/{repo}/installation``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from scheduler.errors import ConfigurationError
from scheduler.github.api import GitHubApi, GitHubApiError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "JWT_SECONDS",
    "REFRESH_MARGIN_SECONDS",
    "AppAuth",
    "InstallationToken",
    "load_private_key",
]

JWT_SECONDS = 9 * 60  # GitHub refuses more than ten minutes; drift is covered by iat
JWT_BACKDATE_SECONDS = 60
REFRESH_MARGIN_SECONDS = 5 * 60  # a token is renewed this long before it expires
# Tokens bought are remembered for masking run output (scheduler.runs.masking); the oldest
# expired long ago when this many newer ones were bought.
BOUGHT_KEPT = 512


def load_private_key(pem: str) -> RSAPrivateKey:
    """The App's RSA key from its PEM text; a readable error (never the key) otherwise."""
    # Imported in App mode only: PyJWT and cryptography cost a cold start ~70 ms.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigurationError(
            f"the GitHub App private key is not a PEM RSA private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError("the GitHub App private key must be an RSA key (GitHub's .pem)")
    return key


@dataclass(frozen=True, slots=True)
class InstallationToken:
    token: str
    expires_at: float  # epoch seconds

    def fresh(self, now: float) -> bool:
        return now < self.expires_at - REFRESH_MARGIN_SECONDS


class AppAuth:
    """The App's JWT and installation tokens for one process; thread-safe."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        api: GitHubApi,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not app_id.strip().isdigit():
            raise ConfigurationError(
                f"SCHEDULER_GITHUB_APP_ID must be the App's numeric id, not {app_id[:20]!r}"
            )
        self.app_id = app_id.strip()
        self._key = load_private_key(private_key)
        self._api = api
        self._clock = clock
        self._lock = threading.Lock()
        self._jwt: tuple[str, float] | None = None
        self._tokens: dict[int, InstallationToken] = {}
        self._token_locks: dict[int, threading.Lock] = {}
        self._installations: dict[str, int] = {}
        self.tokens_bought = 0  # requests made for tokens (tests and figures)
        self._bought: deque[str] = deque(maxlen=BOUGHT_KEPT)

    # -- the App itself ------------------------------------------------------------------------

    def app_jwt(self) -> str:
        """A JWT naming the App, reused until a minute before it expires."""
        now = self._clock()
        with self._lock:
            if self._jwt is not None and now < self._jwt[1] - 60:
                return self._jwt[0]
            issued = int(now) - JWT_BACKDATE_SECONDS
            expires = int(now) + JWT_SECONDS
            claims = {"iat": issued, "exp": expires, "iss": self.app_id}
            import jwt  # App mode only (see load_private_key)

            token = jwt.encode(claims, self._key, algorithm="RS256")
            self._jwt = (token, float(expires))
            return token

    def app_authorization(self) -> str:
        return f"Bearer {self.app_jwt()}"

    # -- installations -------------------------------------------------------------------------

    def remember(self, repo: str, installation_id: int) -> None:
        """A delivery named the installation that serves ``repo``."""
        with self._lock:
            self._installations[repo.lower()] = installation_id

    def forget(self, repo: str) -> None:
        with self._lock:
            self._installations.pop(repo.lower(), None)

    def installation_for(self, repo: str) -> int:
        """The installation id that serves ``repo`` (cached; asked of GitHub once)."""
        with self._lock:
            known = self._installations.get(repo.lower())
        if known is not None:
            return known
        found = self._api.request(
            "GET", f"/repos/{repo}/installation", authorization=self.app_authorization()
        )
        if not isinstance(found, dict) or not isinstance(found.get("id"), int):
            raise GitHubApiError("GET", f"/repos/{repo}/installation", 200, "no installation id")
        self.remember(repo, found["id"])
        return int(found["id"])

    def installation_token(self, installation_id: int) -> str:
        """A token of ``installation_id`` valid for at least five more minutes."""
        with self._lock:
            lock = self._token_locks.setdefault(installation_id, threading.Lock())
        with lock:  # one purchase per installation at a time: the others wait and reuse it
            cached = self._tokens.get(installation_id)
            if cached is not None and cached.fresh(self._clock()):
                return cached.token
            token = self._buy(installation_id)
            self._tokens[installation_id] = token
            return token.token

    def token_for(self, repo: str) -> str:
        """An installation token that may act on ``repo``."""
        return self.installation_token(self.installation_for(repo))

    def authorization_for(self, repo: str) -> str:
        return f"token {self.token_for(repo)}"

    def scoped_token(self, repo: str, permissions: Mapping[str, str]) -> str:
        """A token of ``repo``'s installation that may act on ``repo`` alone, with
        ``permissions`` only (``{"contents": "read"}`` for a build's fetch): bought afresh,
        never cached, so what holds it can do no more than that, for its hour at most."""
        body = {"repositories": [repo.split("/", 1)[1]], "permissions": dict(permissions)}
        return str(self._token_answer(self.installation_for(repo), body)["token"])

    def bought(self) -> tuple[str, ...]:
        """Every installation token this process bought (newest :data:`BOUGHT_KEPT`): what no
        run's output may show."""
        with self._lock:
            return tuple(self._bought)

    def _buy(self, installation_id: int) -> InstallationToken:
        answer = self._token_answer(installation_id)
        return InstallationToken(answer["token"], _epoch(answer.get("expires_at"), self._clock()))

    def _token_answer(
        self, installation_id: int, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """GitHub's answer to buying a token of the installation (``body``: narrower than the
        installation's own rights); the token is remembered for masking."""
        path = f"/app/installations/{installation_id}/access_tokens"
        answer = self._api.request("POST", path, authorization=self.app_authorization(), json=body)
        self.tokens_bought += 1
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise GitHubApiError("POST", path, 201, "no token in the answer")
        with self._lock:
            self._bought.append(answer["token"])
        return answer


def _epoch(value: object, now: float) -> float:
    """``expires_at`` ("2016-07-11T22:14:10Z") as epoch seconds; an hour if unreadable."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return now + 3600
