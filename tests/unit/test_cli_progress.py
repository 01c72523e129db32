"""tokenpulse.cli._progress: a redrawn bar on a TTY, throttled log lines elsewhere."""

from __future__ import annotations

import io
import logging
import time

import pytest

from tokenpulse.cli._progress import (
    Progress,
    ProgressLogHandler,
    format_count,
    format_duration,
    phase,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_format_helpers() -> None:
    assert format_duration(7.4) == "0:07"
    assert format_duration(725) == "12:05"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(-3) == "0:00"
    assert format_count(1234.4) == "1,234"
    assert format_count(2_500_000) == "2.5M"


def test_non_tty_writes_plain_lines_throttled_to_the_log_interval() -> None:
    clock, out = FakeClock(), FakeStream(tty=False)
    p = Progress("sending", total=10_000, unit="records", stream=out, clock=clock)
    assert not p.is_tty
    clock.now += 1
    p.update(1000)  # first update: drawn at once
    clock.now += 1
    p.update(2000)  # within the log interval: not drawn
    clock.now += 10
    p.update(6000)
    p.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "tokenpulse: sending: 1,000/10,000 records (10%), 1,000/s, ETA 0:09",
        "tokenpulse: sending: 6,000/10,000 records (60%), 500/s, ETA 0:08",
        "tokenpulse: sending: 6,000/10,000 records in 12.0 s (500/s)",
    ]
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_tty_redraws_one_line_at_most_every_redraw_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    clock, out = FakeClock(), FakeStream(tty=True)
    p = Progress("sending", total=100, stream=out, clock=clock, redraw_interval_s=0.1)
    assert p.is_tty
    clock.now += 1
    for n in range(1, 51):  # 50 updates within 49 ms: one redraw
        p.update(n)
        clock.now += 0.001
    assert out.getvalue().count("\r") == 1
    clock.now += 0.2
    p.update(60)
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "\n" not in text  # one line, redrawn in place
    last = text.rsplit("\r", 1)[1]
    assert last.startswith("sending [############........] 60/100 (60%), 48/s, ETA 0:01")
    assert last.endswith("\x1b[K")
    p.finish()
    assert out.getvalue().endswith("\r\x1b[Ktokenpulse: sending: 60/100 in 1.2 s (48/s)\n")


def test_narrow_terminal_shortens_the_label_not_the_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    clock, out = FakeClock(), FakeStream(tty=True)
    p = Progress("sending to some.prefix.tokenpulse.usage.v1", total=100, stream=out, clock=clock)
    clock.now += 1
    p.update(50)
    bar = out.getvalue().removeprefix("\r").removesuffix("\x1b[K")
    assert len(bar) <= 59
    assert bar.endswith("[#####.....] 50/100 (50%), 50/s, ETA 0:01")
    assert bar.startswith("sending to")
    assert "~ [" in bar


def test_note_clears_the_bar_and_redraws_it() -> None:
    clock, out = FakeClock(), FakeStream(tty=True)
    p = Progress("reading", total=10, stream=out, clock=clock)
    p.update(3)
    clock.now += 2
    p.note("broker answered")
    text = out.getvalue()
    note_at = text.index("tokenpulse: [   2.0s] broker answered\n")
    assert text[:note_at].endswith("\r\x1b[K")  # the bar was cleared first
    assert text[note_at:].split("\n", 1)[1].startswith("\rreading [")  # and drawn again


def test_unknown_total_shows_count_rate_and_elapsed() -> None:
    clock, out = FakeClock(), FakeStream(tty=False)
    p = Progress("reading t", unit="records", stream=out, clock=clock)
    clock.now += 4
    p.update(400)
    assert out.getvalue() == "tokenpulse: reading t: 400 records, 100/s, 0:04\n"


def test_total_learned_late_and_zero_total() -> None:
    out = FakeStream(tty=False)
    p = Progress("migrating", stream=out, clock=FakeClock())
    p.update(0, 0)
    assert "0/0 (100%)" in out.getvalue()
    p.update(2, 4)
    assert p.total == 4


def test_context_manager_reports_interruption_and_failure() -> None:
    out = FakeStream(tty=False)
    with pytest.raises(KeyboardInterrupt), Progress("x", stream=out, clock=FakeClock()):
        raise KeyboardInterrupt
    assert out.getvalue().endswith("x: interrupted after 0.0 s\n")
    out = FakeStream(tty=False)
    with pytest.raises(ValueError, match="boom"), Progress("y", stream=out, clock=FakeClock()):
        raise ValueError("boom")
    assert out.getvalue().endswith("y: failed after 0.0 s\n")


def test_finish_is_idempotent() -> None:
    out = FakeStream(tty=False)
    p = Progress("z", stream=out, clock=FakeClock())
    p.finish()
    p.finish()
    assert out.getvalue() == "tokenpulse: z: done in 0.0 s\n"


def test_quick_phase_is_silent() -> None:
    out = FakeStream(tty=False)
    with phase("resolving jars", stream=out, quiet_s=5.0):
        pass
    assert out.getvalue() == ""


def test_slow_phase_shows_elapsed_time_and_done() -> None:
    clock, out = FakeClock(), FakeStream(tty=False)
    with phase("starting Kafka", stream=out, quiet_s=1.0, clock=clock) as p:
        clock.now += 3
        p.tick()
    assert out.getvalue().splitlines() == [
        "tokenpulse: starting Kafka ... 0:03",
        "tokenpulse: starting Kafka: done in 3.0 s",
    ]


def test_ticking_redraws_from_a_thread_on_a_tty() -> None:
    out = FakeStream(tty=True)
    p = Progress("waiting", stream=out, redraw_interval_s=0.01)
    with p.ticking():
        for _ in range(200):  # until the thread has drawn twice; no sleep-based timing
            if out.getvalue().count("\r") >= 2:
                break
            time.sleep(0.01)
    assert out.getvalue().count("\r") >= 2
    assert "waiting 0:00\x1b[K" in out.getvalue()


def test_log_handler_routes_records_through_the_progress() -> None:
    clock, out = FakeClock(), FakeStream(tty=True)
    p = Progress("up", total=2, stream=out, clock=clock)
    p.update(1)
    logger = logging.getLogger("tokenpulse.test_cli_progress")
    handler = ProgressLogHandler(p)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("starting Kafka %s", "3.9.1")
    finally:
        logger.removeHandler(handler)
    assert "\r\x1b[Ktokenpulse: [   0.0s] starting Kafka 3.9.1\n" in out.getvalue()
