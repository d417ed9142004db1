"""``scheduler up``: the whole local stack in one process tree.

DynamoDB Local (with a data directory, so jobs survive a restart), the tables (created from
the template if missing), the HTTP server (webhook + query API), the stream runner feeding the
same dispatcher the Lambda uses, the local executor and the reaper. Stopping (Ctrl-C or
SIGTERM) takes them down in reverse order: no orphan JVM, no orphan run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from scheduler import stack_file
from scheduler.api.auth import is_loopback_host
from scheduler.api.metrics_route import scheduler_metrics
from scheduler.config import RepoPolicy, RepositoryConfig, load_config
from scheduler.db import clients
from scheduler.db.tables import ensure_tables
from scheduler.errors import ConfigurationError, StoreUnavailable
from scheduler.github.app_mode import github_app
from scheduler.github.clone_urls import github_host
from scheduler.github.delivery import webhook_secret
from scheduler.local.dynamodb_local import DynamoDBLocal, port_in_use, stack_access_key
from scheduler.local.dynamodb_local_install import ensure_installed
from scheduler.local.executor import LocalExecutor
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.mapping import PollingConfig
from scheduler.local.pipeline_file import MirrorPipelineReader
from scheduler.local.run_log import RUNS_FOLDER, logs_dir_in
from scheduler.local.sandbox import Bubblewrap, find_sandbox
from scheduler.local.stream_runner import StreamRunner
from scheduler.runs.claims import ClaimOnActivation
from scheduler.runs.executor import OnFinished
from scheduler.runs.reaper import Reaper
from scheduler.settings import Settings
from scheduler.store_outage import STORE
from scheduler.wiring import Core, build_core, mask_for_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".scheduler")
    max_parallel_runs: int = 4
    reaper_interval_seconds: float = 2.0
    # The reconciliation: held slots of stopped runs, stalled queues (a lost record, a raised
    # limit).
    sweep_interval_seconds: float = 10.0
    # Idle polling: at most this long between empty GetRecords (latency vs idle CPU).
    idle_poll_seconds: float = 0.15
    dynamodb_heap_mb: int = 256
    # A fixed port, so that the CLI can be pointed at it (0 picks a free one).
    dynamodb_port: int = 8000


class LocalStack:
    """The running parts; :meth:`start` then :meth:`stop` (or use it as a context manager)."""

    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.options = options
        self._stop = threading.Event()
        self._recovered = threading.Event()  # the stream runs only after recovery
        self._stop_supervisor = threading.Event()  # set last: the runs report until the end
        self._supervisor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._dynamodb: DynamoDBLocal | None = None
        self._http: LocalHTTPServer | None = None
        self._executor: LocalExecutor | None = None
        self.core: Core | None = None
        self.settings = settings  # pointed at the DynamoDB Local endpoint once started
        self.config: RepositoryConfig | None = None
        self.stack_file: Path | None = None  # written once started, removed on stop

    @property
    def url(self) -> str:
        assert self._http is not None
        return self._http.url

    def preflight(self) -> RepositoryConfig:
        """Fail fast, before starting anything: secret, configuration file, another stack on
        the same data directory, ports."""
        # The stack always serves a local endpoint (its own DynamoDB Local, unless one is set),
        # which is what the unsigned-delivery opt-out requires.
        webhook_secret(replace(self.settings, dynamodb_endpoint="http://local"))
        if not self.settings.api_token and not is_loopback_host(self.options.host):
            # Without a token the read routes, the dashboard and its buttons ask nobody.
            raise ConfigurationError(
                f"refusing to serve on {self.options.host} without an API token: set"
                " SCHEDULER_API_TOKEN, or serve on loopback (--host 127.0.0.1)"
            )
        config = load_config(self.settings.config_path)
        sandbox_for(config, self.options.data_dir)  # runs that need a sandbox need one here
        unsandboxed = [name for name, policy in _policies(config) if policy.sandbox == "off"]
        if unsandboxed:
            log.warning(
                'runs are NOT sandboxed for %s (sandbox = "off"): their commands can read the'
                " scheduler's data and reach its database",
                ", ".join(unsandboxed),
            )
        self._refuse_a_second_stack()
        if port_in_use(self.options.port, self.options.host):
            raise ConfigurationError(
                f"port {self.options.port} on {self.options.host} is already in use"
                " (choose another with --port)"
            )
        own_dynamodb = self.settings.dynamodb_endpoint is None
        if own_dynamodb and self.options.dynamodb_port and port_in_use(self.options.dynamodb_port):
            raise ConfigurationError(
                f"port {self.options.dynamodb_port} (DynamoDB Local) is already in use"
                " (choose another with --dynamodb-port, or set SCHEDULER_DYNAMODB_ENDPOINT)"
            )
        return config

    def _refuse_a_second_stack(self) -> None:
        try:
            running = stack_file.read(self.options.data_dir)
        except ConfigurationError:
            return  # unreadable: overwritten once this stack is up
        if running is None or running.pid == os.getpid() or not running.running():
            return
        address = urlsplit(running.url)  # a reused pid serves nothing there
        if port_in_use(address.port or 80, address.hostname or "127.0.0.1"):
            raise ConfigurationError(
                f"a local stack is already running from {self.options.data_dir}"
                f" (pid {running.pid}, {running.url}): stop it, or choose another --data-dir"
            )

    def _write_stack_file(self) -> None:
        """Tell CLI commands run from this folder where the stack is (see
        :mod:`scheduler.stack_file`); written last, so it names a stack that is ready."""
        settings = self.settings
        assert settings.dynamodb_endpoint is not None
        config = settings.config_path
        self.stack_file = stack_file.write(
            self.options.data_dir.resolve(),
            stack_file.StackInfo(
                pid=os.getpid(),
                url=self.url,
                dynamodb_endpoint=settings.dynamodb_endpoint,
                region=settings.region,
                data_dir=str(self.options.data_dir.resolve()),
                tables=asdict(settings.tables),
                config=str(config.resolve()) if config is not None else None,
                started_at=time.time(),
                access_key_id=settings.access_key_id if self._dynamodb is not None else None,
            ),
        )

    def start(self) -> LocalStack:
        config = self.config = self.preflight()
        data_dir = self.options.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_dir.chmod(0o700)  # its database, logs and stack file are nobody else's
        settings = self.settings
        if settings.dynamodb_endpoint is None:
            key = stack_access_key(data_dir / "dynamodb", settings.region)
            ensure_installed(settings.dynamodb_local_dir)  # first use: one progress line
            self._dynamodb = DynamoDBLocal(
                settings.dynamodb_local_dir,
                port=self.options.dynamodb_port or None,
                data_dir=data_dir / "dynamodb",
                heap_mb=self.options.dynamodb_heap_mb,
                log_path=data_dir / "dynamodb-local.log",
                access_key=key,
            )
            settings = replace(
                settings.for_local(self._dynamodb.start()),
                access_key_id=key,
                secret_access_key=key,
            )
        self.settings = settings
        if self._dynamodb is not None:
            server = self._dynamodb
            self._supervisor = threading.Thread(
                target=server.keep_alive,
                args=(self._stop_supervisor,),
                name="dynamodb-supervisor",
                daemon=True,
            )
            self._supervisor.start()
        ensure_tables(clients.client("dynamodb", settings), settings)
        core = self.core = compose(settings, self.options, config=config)
        assert core.runs is not None and isinstance(core.runs.executor, LocalExecutor)
        self._executor = core.runs.executor

        dispatcher = core.dispatcher
        runner = StreamRunner.from_settings(
            settings,
            handler=lambda event, _context: dispatcher.handle_event(event),
            polling=PollingConfig(idle_max_seconds=self.options.idle_poll_seconds),
        )
        self._spawn("stream-runner", lambda: self._stream(runner))
        self._spawn("reaper", lambda: self._reap(self.options.reaper_interval_seconds, core))
        app = core.http_app
        scheduler_metrics(core.store, lambda: asdict(runner.stats))(app.router)  # GET /metrics
        self._http = LocalHTTPServer(app, self.options.host, self.options.port).start()
        self._write_stack_file()
        return self

    def _stream(self, runner: StreamRunner) -> None:
        """Run the stream once recovery is done. A record redelivered after a crash may ask
        for a run that the previous stack claimed: started before recovery, the new run sits
        in the pool, recovery sees it waiting and leaves the job, then its claim is refused
        and the job waits for its deadline. After recovery, the lost run is failed first
        (``runner_lost``, retried) and the redelivered record finds the claim taken."""
        while not self._recovered.wait(0.2):
            if self._stop.is_set():
                return
        runner.run(self._stop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _reap(self, seconds: float, core: Core) -> None:
        """First recover what a previous run of the stack left (until the store answers),
        then judge overdue jobs every ``seconds`` (every active job once DynamoDB Local was
        restarted) and reconcile (held slots, stalled queues) every ``sweep_interval_seconds``
        (at once after recovery: a raised limit takes effect)."""
        while not self._stop.is_set():
            try:
                self._recover(core.reaper)
                STORE.answered()
                self._recovered.set()
                break
            except StoreUnavailable as exc:
                STORE.failed(exc, "recovery after a restart")  # one line per outage, not per try
                self._stop.wait(seconds)
            except Exception:
                log.exception("recovery failed; trying again")
                self._stop.wait(seconds)
        next_sweep = next_prune = 0.0
        restarts_seen = self._database_restarts()
        while not self._stop.is_set():
            try:
                restarts = self._database_restarts()
                if restarts != restarts_seen:
                    self._recover_lost_writes(core.reaper)
                    restarts_seen = restarts
                if time.monotonic() >= next_sweep:
                    core.reconciler.run_once()
                    next_sweep = time.monotonic() + self.options.sweep_interval_seconds
                if time.monotonic() >= next_prune and self._executor is not None:
                    # Run logs go with their jobs (the items' retention).
                    self._executor.prune_logs(self.settings.retention_days * 86_400)
                    next_prune = time.monotonic() + 3600
                core.reaper.reap_once()
                STORE.answered()
            except StoreUnavailable as exc:
                STORE.failed(exc, "reaper round")  # one line per outage, not one per round
            except Exception:
                # Nothing may end this loop but a stop: without it no run is timed out or
                # recovered, and no stalled queue re-driven, until the stack restarts.
                log.exception("reaper round failed; trying again next round")
            self._stop.wait(seconds)

    def _recover(self, reaper: Reaper) -> None:
        """After a stop or a crash: kill leftover process trees of lost runs, report outcomes
        that were never recorded, then fail runs lost with the old runner (``runner_lost``,
        retried automatically) and start again the runs that never started, claimed or not."""
        assert self._executor is not None
        killed = self._executor.records.kill_leftovers()
        for key, result in self._executor.records.unreported_results():
            self._executor.report(key, result)
        done = reaper.recover()
        if killed or done:
            log.warning(
                "recovered after a restart",
                extra={"killed": len(killed), **Counter(done.values())},
            )

    def _database_restarts(self) -> int:
        return self._dynamodb.restarts if self._dynamodb is not None else 0

    @staticmethod
    def _recover_lost_writes(reaper: Reaper) -> None:
        """After DynamoDB Local restarted: writes it acknowledged just before it died may be
        gone (a finish, a cancel, a claim), and the stream lost their records with them. Every
        active job is judged now, not at its deadline: a run that ended here is reported again
        as it ended, a claimed run that never began is started. Safe while the stream runs: the
        executor never starts an attempt twice."""
        done = reaper.recover()
        log.warning(
            "judged active jobs after DynamoDB Local restarted", extra=Counter(done.values())
        )

    def wait(self, stop_requested: Callable[[], bool]) -> None:
        """Block until ``stop_requested()`` (set by a signal handler) turns true.

        A plain flag polled with sleep, not ``Event.wait``: a signal handler runs in the main
        thread, and setting an Event the main thread is waiting on deadlocks on its lock.
        """
        while not stop_requested() and not self._stop.is_set():
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            self._stop_parts()
        finally:
            # Last: while the parts stop, the CLI still names this stack rather than AWS.
            if self.stack_file is not None:
                stack_file.remove(self.stack_file.parent, os.getpid())

    def _stop_parts(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.stop()
        for thread in self._threads:
            thread.join(10)
        if self._executor is not None:
            self._executor.close()  # kills runs still going; the reaper retries them later
        if self.core is not None:
            self.core.close()
        self._stop_supervisor.set()
        if self._supervisor is not None:
            self._supervisor.join(10)
        if self._dynamodb is not None:
            self._dynamodb.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def compose(
    settings: Settings, options: StackOptions, *, config: RepositoryConfig | None = None
) -> Core:
    """The local runtime's core: runs are processes of a bounded local pool; their logs are
    files under the data directory (read by the log route from there)."""
    runs_dir = options.data_dir.resolve() / RUNS_FOLDER
    config = config if config is not None else load_config(settings.config_path)
    sandbox = sandbox_for(config, options.data_dir)

    made: list[LocalExecutor] = []

    def executor(finished: OnFinished) -> LocalExecutor:
        made.append(
            LocalExecutor(
                runs_dir,
                finished,
                max_parallel=options.max_parallel_runs,
                log_max_bytes=settings.log_max_bytes,
                mask_for=mask_for_settings(settings, config),
                sandbox=sandbox,
                github_host=github_host(settings.github_api_url),
                # GitHub App mode: git fetches with the repository's installation token.
                git_token_for=app.auth.token_for if (app := github_app(settings)) else None,
            )
        )
        return made[-1]

    return build_core(
        settings,
        executor=executor,
        config=config,
        log_reader=LocalLogReader(logs_dir_in(options.data_dir.resolve())),
        # The activation claims the run for this runner (its folder); its record starts it.
        # The runner's logs say which attempts it ever took (see LocalExecutor.status).
        claims=ClaimOnActivation(),
        # Pipeline files are read from the mirrors the runs' checkouts fetch into.
        pipeline_reader=lambda: MirrorPipelineReader(made[-1].checkout),
    )


def sandbox_for(config: RepositoryConfig, data_dir: Path | None = None) -> Bubblewrap | None:
    """The sandbox the configuration's runs need, checked to work here (None: none asks for
    one). No sandbox where one is needed is a :class:`ConfigurationError`: the stack does not
    start rather than run a pull request's code with the scheduler's rights. Neither does a
    ``sandbox_paths`` folder that would share the data folder with runs."""
    policies = _policies(config)
    data = data_dir.resolve() if data_dir is not None else None
    for name, policy in policies:
        for folder in policy.sandbox_paths:
            shared = Path(folder).resolve()
            if data is not None and (
                shared == data or shared in data.parents or data in shared.parents
            ):
                raise ConfigurationError(
                    f"{config.source}: {name}: sandbox_paths {folder!r} would share the"
                    f" scheduler's data folder {data} with runs"
                )
    if all(policy.sandbox == "off" for _name, policy in policies):
        return None
    return find_sandbox()


def _policies(config: RepositoryConfig) -> list[tuple[str, RepoPolicy]]:
    return [("defaults", config.defaults), *config.repos.items()]


def serve(
    settings: Settings, options: StackOptions, announce: Callable[[LocalStack], None]
) -> None:
    """Run the stack in the foreground until SIGINT or SIGTERM."""
    # Everything the stack writes (database, logs, work trees, stack file) is its user's only.
    os.umask(0o077)
    stack = LocalStack(settings, options)
    requested: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        requested.append(signum)  # only a flag: see LocalStack.wait

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        announce(stack)
        stack.wait(lambda: bool(requested))
        log.info("stopping on signal %s", requested[0] if requested else "?")
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
