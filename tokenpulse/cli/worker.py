"""`tokenpulse worker`: run the stream processors (one Faust worker).

Runs Faust's Worker programmatically (not the faust CLI): topics are created
first, the sink and the quota feed start, then the Faust app consumes until
SIGTERM/SIGINT, on which it stops cleanly with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tokenpulse.cli._common import add_parser

FATAL_STOP_GRACE_S = 30.0

log = logging.getLogger("tokenpulse.cli.worker")

_T = TypeVar("_T")


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "worker",
        help="run the stream processors: validate, dedup, meter, quotas",
        description="Consume tokenpulse.usage.v1 and meter it into ClickHouse: validate, verify "
        "signatures, dedup, write usage_events, enforce quotas (alerts and state topics). "
        "Runs until SIGTERM/SIGINT, then leaves the consumer group cleanly (exit 0); exit 70 "
        "when it stopped on an error retrying could not fix. Configured by "
        "KAFKA_BOOTSTRAP_SERVERS, CLICKHOUSE_URL and TOKENPULSE_* variables (see "
        "docs/streams.md); flags override them. Start more workers with the same group to "
        "scale out.",
        example_lines=(
            "tokenpulse worker --keyring keyring.json            # verify signed events",
            "tokenpulse worker --no-verify-signatures --loglevel info",
            "tokenpulse worker --topic-prefix staging. --partitions 3",
        ),
    )
    p.add_argument("--workers-id", dest="app_id", help="Faust app id / consumer group")
    p.add_argument("--loglevel", default=None, help="debug, info, warning, error")
    p.add_argument("--topic-prefix", default=None, help="prefix for every topic name")
    p.add_argument("--topic-suffix", default=None, help="suffix for every topic name")
    p.add_argument("--partitions", type=int, default=None, help="partitions of created topics")
    p.add_argument("--data-dir", type=Path, default=None, help="Faust data directory")
    p.add_argument(
        "--no-verify-signatures",
        dest="verify_signatures",
        action="store_false",
        default=None,
        help="accept unsigned records (when broker ACLs authenticate producers)",
    )
    p.add_argument(
        "--keyring", type=Path, default=None, help="keyring file (TOKENPULSE_KEYRING_FILE)"
    )
    p.add_argument(
        "--pricebook",
        type=Path,
        default=None,
        help="billing price book TOML that prices metric=cost quotas (TOKENPULSE_PRICEBOOK)",
    )
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from tokenpulse.streams.settings import TopicNames, WorkerSettings

    env = dict(os.environ)
    if args.topic_prefix is not None:
        env["TOKENPULSE_TOPIC_PREFIX"] = args.topic_prefix
    if args.topic_suffix is not None:
        env["TOKENPULSE_TOPIC_SUFFIX"] = args.topic_suffix
    if args.app_id:
        env["TOKENPULSE_WORKER_GROUP"] = args.app_id
    s = WorkerSettings.from_env(env)
    changes: dict[str, Any] = {}
    if args.partitions is not None:
        changes["partitions"] = args.partitions
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.verify_signatures is not None:
        changes["verify_signatures"] = args.verify_signatures
    if args.keyring is not None:
        changes["keyring_file"] = args.keyring
    if args.loglevel:
        changes["loglevel"] = args.loglevel
    if args.pricebook is not None:
        changes["pricebook_file"] = args.pricebook
    assert isinstance(s.topics, TopicNames)
    return s.with_(**changes) if changes else s


def run(args: argparse.Namespace) -> int:
    # Until Faust's worker installs its own handlers, a SIGTERM (a rolling
    # update, a supervisor giving up on a slow start) must still stop the
    # process cleanly with exit 0 instead of killing it mid-start. Before the
    # event loop exists (imports, settings) the handler raises; from then on
    # _StartGuard takes the signal through the loop.
    signal.signal(signal.SIGTERM, _terminated_while_starting)
    try:
        return _run(args)
    except TerminatedWhileStarting:
        return _stopping_while_starting()


def _run(args: argparse.Namespace) -> int:
    import faust

    from tokenpulse.streams.agents import build_worker
    from tokenpulse.streams.topics import ensure_topics

    code: object = 0
    settings = _settings(args)
    from tokenpulse.streams.logs import logging_config

    json_logs = logging_config(settings.loglevel, settings.log_format)
    if json_logs is not None:
        import logging.config

        logging.config.dictConfig(json_logs)  # for the start-up lines, before Faust's setup
    # One loop for everything: the runtime's clients must live on the loop
    # the Faust worker runs.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    guard = _StartGuard(loop)
    runtime = None
    try:
        guard.run(ensure_topics(settings))
        app, runtime = build_worker(settings)
        guard.run(runtime.start())
        worker = faust.Worker(
            app,
            loop=loop,
            loglevel=settings.loglevel,
            quiet=True,
            logging_config=json_logs,
        )
        runtime.on_fatal = lambda: _stop_after_fatal(loop, runtime.exit_code or 1)
        tune_gc(settings.gc_gen0_threshold)
        guard.hand_over()
        try:
            worker.execute_from_commandline()  # returns only by raising SystemExit
        except SystemExit as exc:
            code = exc.code
    except TerminatedWhileStarting:
        stopped = _stopping_while_starting()
        guard.release()  # a second SIGTERM ends the process at once
        if runtime is not None and not loop.is_closed():
            loop.run_until_complete(runtime.stop())
        return stopped
    if runtime.exit_code is not None:
        return runtime.exit_code
    return code if isinstance(code, int) else (0 if code is None else 1)


class TerminatedWhileStarting(BaseException):
    """SIGTERM arrived before Faust's worker handled signals itself.

    A BaseException, like KeyboardInterrupt: the retry loops of the start
    (`except Exception`) must not take it for a failed connection.
    """


def _stopping_while_starting() -> int:
    """The one line a SIGTERM during the start leaves (before any cleanup), and its exit code."""
    log.warning("SIGTERM while starting: stopping before consuming anything (exit 0)")
    return 0


def _terminated_while_starting(signum: int, frame: object) -> None:
    raise TerminatedWhileStarting(f"signal {signum}")


class _StartGuard:
    """SIGTERM during the asynchronous start: cancel the start step, then stop.

    An exception raised from a Python-level signal handler lands in whatever
    code runs at that instant. Inside the event loop that can be another
    task's step or a callback, where asyncio keeps it (as that task's result,
    or a logged "Exception in callback") and the start goes on waiting, e.g.
    on a ClickHouse that never answers: CI saw a worker still alive 30 s after
    its SIGTERM. Through the loop's own signal handling the signal becomes a
    callback that cancels the step in progress, wherever it is waiting.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._step: asyncio.Task[Any] | None = None
        self._handed_over = False
        self.terminated = False
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def run(self, step: Coroutine[Any, Any, _T]) -> _T:
        """Run one start step to completion; TerminatedWhileStarting on SIGTERM."""
        if self.terminated:
            step.close()
            raise TerminatedWhileStarting("SIGTERM")
        task = self._loop.create_task(step)
        self._step = task
        try:
            return self._loop.run_until_complete(task)
        except asyncio.CancelledError:
            if self.terminated:
                raise TerminatedWhileStarting("SIGTERM") from None
            raise
        finally:
            self._step = None

    def hand_over(self) -> None:
        """Faust's worker is next: it installs its own SIGTERM handler early in its start."""
        if self.terminated:
            raise TerminatedWhileStarting("SIGTERM")
        self._handed_over = True

    def release(self) -> None:
        """Back to the default action (the process ends at once)."""
        self._loop.remove_signal_handler(signal.SIGTERM)

    def _on_sigterm(self) -> None:
        if self._handed_over:
            # Only reached if Faust's start suspends before installing its
            # handler, which replaces this one: send the signal again until
            # Faust takes it, so its clean stop runs.
            self._loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            return
        self.terminated = True
        if self._step is not None:
            self._step.cancel()


def tune_gc(gen0_threshold: int) -> None:
    """Fewer, cheaper garbage collections for the rest of the process (0: leave Python's).

    Each record costs the worker a handful of short-lived objects (tuples of
    the batch, decoded events): with Python's gen0 threshold of 700 a
    collection ran every few hundred records, and each full one walked every
    object of the start (Faust, aiokafka, the modules): a quarter of the
    worker's CPU (bench/drain_bench.py, docs/streams.md). The start's
    objects are frozen (never scanned again; they live as long as the
    process anyway), and young collections wait for `gen0_threshold` new
    objects. Reference cycles are still collected.
    """
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def _stop_after_fatal(loop: asyncio.AbstractEventLoop, exit_code: int) -> None:
    """Stop like on SIGTERM (clean leave of the group), with a hard exit as backstop.

    The backstop covers a shutdown that hangs (e.g. on a store that never
    answers): a supervisor can only restart a process that exited.
    """
    loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
    timer = threading.Timer(FATAL_STOP_GRACE_S, os._exit, (exit_code,))
    timer.daemon = True
    timer.start()
