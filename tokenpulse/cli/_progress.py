"""Progress for long commands: a redrawn bar on a terminal, plain log lines otherwise.

Dependency-free. On a TTY one line shows count/total, rate and ETA (or, with
no total, elapsed time and a spinner), redrawn at most every
`redraw_interval_s`; anywhere else (CI logs, pipes, files) a plain
`tokenpulse: ...` line is written at most every `log_interval_s`, so logs
stay readable. Progress always goes to stderr: stdout is the command's
result, which scripts parse.

    with Progress("sending", total=20_000, unit="events") as p:
        for n in ...:
            p.update(n)

    with phase("resolving Kafka jars"):   # a blocking call with no count
        resolve()
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

_SPINNER = "|/-\\"
_PREFIX = "tokenpulse: "


def format_duration(seconds: float) -> str:
    """`0:07`, `12:05`, `1:02:03`: short and fixed-format for ETAs and elapsed times."""
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_count(n: float) -> str:
    """Thousands separated below a million, then `1.2M` style (rates, counts)."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.1f}G"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,.0f}"


class Progress:
    """One task's progress: `update(done)` as work happens, `finish()` at the end.

    Thread-safe: `ticking()` redraws from a background thread while the
    caller blocks in a call that reports nothing (jar downloads, start-up).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        redraw_interval_s: float = 0.1,
        log_interval_s: float = 10.0,
        quiet_s: float = 0.0,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._clock = clock
        self._redraw_interval_s = redraw_interval_s
        self._log_interval_s = log_interval_s
        # Nothing is shown for a task that ends within quiet_s: a warm start
        # (cached jars, running stack) or an instant refusal stays one line.
        self._quiet_s = quiet_s
        self._shown = False
        self._started = clock()
        self._last_draw: float | None = None
        self._frame = 0
        self._bar_visible = False
        self._finished = False
        self._lock = threading.RLock()

    @property
    def is_tty(self) -> bool:
        return self._tty

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def update(self, done: int, total: int | None = None) -> None:
        """Set the absolute count (and the total when it becomes known)."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            self._maybe_draw()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def tick(self) -> None:
        """Redraw if due, without new counts (keeps elapsed time and spinner moving)."""
        with self._lock:
            self._maybe_draw()

    def note(self, message: str) -> None:
        """A log line that does not garble the bar: clear, write, redraw."""
        with self._lock:
            self._clear()
            self._write(f"{_PREFIX}[{self.elapsed_s:6.1f}s] {message}\n")
            if self._tty and not self._finished and self._last_draw is not None:
                self._draw()

    def finish(self, message: str | None = None) -> None:
        """End the line with a summary (count, elapsed, rate); idempotent."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if not self._shown and self.elapsed_s < self._quiet_s:
                return
            self._clear()
            self._write(f"{_PREFIX}{message or self.summary()}\n")

    def summary(self) -> str:
        elapsed = self.elapsed_s
        if self.total is None and self.done == 0:
            return f"{self.label}: done in {elapsed:.1f} s"
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        unit = f" {self.unit}" if self.unit else ""
        rate = f" ({format_count(self.done / elapsed)}/s)" if elapsed > 0 else ""
        return f"{self.label}: {count}{unit} in {elapsed:.1f} s{rate}"

    def line(self) -> str:
        """The current status in one line (what the log line shows)."""
        numbers = self._numbers()
        if self.total is None and self.done == 0:
            return f"{self.label} ... {numbers}"
        return f"{self.label}: {numbers}"

    def _numbers(self) -> str:
        elapsed = self.elapsed_s
        rate = self.done / elapsed if elapsed > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            if self.done == 0:
                return format_duration(elapsed)
            return f"{self.done:,}{unit}, {format_count(rate)}/s, {format_duration(elapsed)}"
        fraction = min(1.0, self.done / self.total) if self.total > 0 else 1.0
        eta = (
            format_duration((self.total - self.done) / rate)
            if rate > 0 and self.done < self.total
            else "--:--"
        )
        return (
            f"{self.done:,}/{self.total:,}{unit} ({fraction:.0%}), "
            f"{format_count(rate)}/s, ETA {eta}"
        )

    @contextmanager
    def ticking(self) -> Iterator[Progress]:
        """Keep the display alive from a thread while the caller blocks."""
        stop = threading.Event()
        interval = self._redraw_interval_s if self._tty else min(1.0, self._log_interval_s)

        def run() -> None:
            while not stop.wait(interval):
                self.tick()

        thread = threading.Thread(target=run, name="tokenpulse-progress", daemon=True)
        self.tick()
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish(f"{self.label}: interrupted after {self.elapsed_s:.1f} s")
        else:
            self.finish(f"{self.label}: failed after {self.elapsed_s:.1f} s")

    # drawing -------------------------------------------------------------

    def _maybe_draw(self) -> None:
        if self._finished:
            return
        now = self._clock()
        if now - self._started < self._quiet_s:
            return
        interval = self._redraw_interval_s if self._tty else self._log_interval_s
        if self._last_draw is not None and now - self._last_draw < interval:
            return
        self._last_draw = now
        self._draw()

    def _draw(self) -> None:
        if not self._tty:
            self._write(f"{_PREFIX}{self.line()}\n")
            return
        width = shutil.get_terminal_size((80, 24)).columns
        text = self._bar_text(width)
        self._write("\r" + text[: max(10, width - 1)] + "\x1b[K")
        self._bar_visible = True

    def _bar_text(self, width: int) -> str:
        # The numbers matter most on a narrow terminal: the label gives way first.
        self._frame += 1
        numbers = self._numbers()
        if self.total is None or self.total <= 0:
            head, tail = f"{_SPINNER[self._frame % len(_SPINNER)]} ", f" {numbers}"
        else:
            fraction = min(1.0, self.done / self.total)
            bar_width = 20 if width >= 100 else 10
            filled = int(fraction * bar_width)
            head, tail = "", f" [{'#' * filled}{'.' * (bar_width - filled)}] {numbers}"
        room = width - 1 - len(head) - len(tail)
        label = self.label
        if len(label) > room:
            label = label[: max(0, room - 1)] + "~" if room > 8 else ""
        return f"{head}{label}{tail}".lstrip()

    def _clear(self) -> None:
        if self._bar_visible:
            self._write("\r\x1b[K")
            self._bar_visible = False

    def _write(self, text: str) -> None:
        self._shown = True
        self._stream.write(text)
        self._stream.flush()


@contextmanager
def phase(
    label: str,
    *,
    stream: TextIO | None = None,
    tty: bool | None = None,
    quiet_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    """A step with no count: elapsed time while it runs, `done in N s` when it ends.

    Silent when the step ends within quiet_s; otherwise shown from then on.
    """
    progress = Progress(label, stream=stream, tty=tty, quiet_s=quiet_s, clock=clock)
    with progress, progress.ticking():
        yield progress


class ProgressLogHandler(logging.Handler):
    """Route a library's log records through a Progress, so they and the bar do not mix."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.note(record.getMessage())
        except Exception:
            self.handleError(record)
