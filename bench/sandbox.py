"""What isolation costs: a run's spawn with and without its sandbox, and DynamoDB Local's start.

* **spawn**: a command (``true``) started and waited for, as the local executor does (an argv,
  its own session), plain and inside the bubblewrap sandbox of ``scheduler.local.sandbox``,
  interleaved so that both see the same machine; p50 and p90 of each and their ratio.
* **database start**: DynamoDB Local from start to its first answer, as ``java -jar`` (every
  interface) and through the loopback launcher the stack uses (compiled once, then cached).

Run from the project root::

    .venv/bin/python bench/sandbox.py [--spawns 200] [--starts 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scheduler.local.dynamodb_local import DynamoDBLocal, find_jar, free_port
from scheduler.local.sandbox import find_sandbox
from scheduler.settings import Settings


def spawn_ms(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, check=True, start_new_session=True)
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spawns(count: int) -> None:
    sandbox = find_sandbox()
    env = {"PATH": "/usr/bin:/bin"}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        wrapped = sandbox.wrap(["true"], workdir=work, env=env, network=True)
        offline = sandbox.wrap(["true"], workdir=work, env=env, network=False)
        plain: list[float] = []
        boxed: list[float] = []
        no_net: list[float] = []
        for _ in range(count):
            plain.append(spawn_ms(["true"], work))
            boxed.append(spawn_ms(wrapped, work))
            no_net.append(spawn_ms(offline, work))
    base = statistics.median(plain)
    print(f"spawn of `true`, {count} each, interleaved (ms):")
    for name, values in (("plain", plain), ("sandbox", boxed), ("sandbox, no network", no_net)):
        p50 = statistics.median(values)
        print(f"  {name:<20} p50 {p50:6.2f}  p90 {percentile(values, 0.9):6.2f}  x{p50 / base:.1f}")


def database_starts(count: int) -> None:
    install = Settings().dynamodb_local_dir
    jar = find_jar(install)
    plain: list[float] = []
    loopback: list[float] = []
    for _ in range(count):
        port = free_port()
        command = [
            "java",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-port",
            str(port),
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
        ]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_answering(port)
            plain.append(time.perf_counter() - started)
        finally:
            process.kill()
            process.wait()
        server = DynamoDBLocal(install, heap_mb=256)
        started = time.perf_counter()
        with server:
            loopback.append(time.perf_counter() - started)
    print(f"DynamoDB Local start to first answer, {count} each (s):")
    print(f"  java -jar (every interface)  p50 {statistics.median(plain):.2f}")
    print(f"  loopback launcher            p50 {statistics.median(loopback):.2f}")


def wait_answering(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"http://127.0.0.1:{port}", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("DynamoDB Local did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    spawns(args.spawns)
    database_starts(args.starts)


if __name__ == "__main__":
    main()
