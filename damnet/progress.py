"""Progress of long loops: a tqdm bar on a terminal, a plain line at a steady interval off one.

Airflow task logs and Kubernetes pod logs are not terminals: a tqdm bar there is either
nothing (tqdm disables itself) or carriage-return noise. Off a terminal, :class:`Progress`
prints one line every ``DAMNET_PROGRESS_SECONDS`` seconds (default 30) instead::

    train: 1200/3000 step (40%), 12.3 step/s, elapsed 1:38, ETA 2:26, seg_source 0.212 disc 0.45

and a last line when the loop ends, if it printed any (a loop shorter than the interval
stays silent). ``enabled``: None (the default) shows progress as just described, False
shows nothing (e.g. DDP ranks other than 0), True is the same as None.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any, Generic, TextIO, TypeVar

T = TypeVar("T")

ENV_VAR = "DAMNET_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def interval_from_env() -> float:
    """Seconds between progress lines: ``DAMNET_PROGRESS_SECONDS`` if it is a positive number."""
    try:
        value = float(os.environ.get(ENV_VAR, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 and math.isfinite(value) else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress(Generic[T]):
    """Iterate ``iterable`` and show how far it got (a bar on a terminal, lines off one).

    ``total``: the number of items (default ``len(iterable)`` where it has one); ``initial``:
    items already done before this loop (a resumed training). ``set_postfix`` adds named
    values (losses) to the bar and the lines. Use it as a context manager or iterate it to
    the end so that the last line is printed.
    """

    def __init__(self, iterable: Iterable[T], *, desc: str, unit: str = "it", total: int | None = None,
                 initial: int = 0, enabled: bool | None = None, leave: bool = True,
                 interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._iterable = iterable
        self.desc, self.unit, self.initial, self.n = desc, unit, initial, initial
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.interval = interval if interval is not None else interval_from_env()
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._postfix: dict[str, str] = {}
        self._started = self._last = clock()
        self._printed = self._closed = False
        self._bar: Any = None
        self.mode = "off" if enabled is False else ("bar" if _is_terminal(self._stream) else "lines")
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(iterable, desc=desc, unit=unit, total=self.total, initial=initial, leave=leave,
                             file=self._stream)

    def __iter__(self) -> Iterator[T]:
        if self._bar is not None:
            yield from self._bar
            return
        for item in self._iterable:
            yield item
            self.n += 1
            if self.mode == "lines" and self._clock() - self._last >= self.interval:
                self._print()
        self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, values: Mapping[str, object]) -> None:
        """Named values shown after the counts (e.g. the latest losses)."""
        self._postfix = {str(k): str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)

    def line(self, done: bool = False) -> str:
        """The progress line as it would be printed now."""
        elapsed = self._clock() - self._started
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}"
                 + (f" ({self.n / self.total:.0%})" if self.total else "")]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if done:
            parts.append(f"done in {duration(elapsed)}")
        else:
            parts.append(f"elapsed {duration(elapsed)}")
            if rate > 0 and self.total:
                parts.append(f"ETA {duration(max(self.total - self.n, 0) / rate)}")
        text = ", ".join(parts)
        if self._postfix:
            text += ", " + " ".join(f"{k} {v}" for k, v in self._postfix.items())
        return text

    def _print(self, done: bool = False) -> None:
        print(self.line(done), file=self._stream, flush=True)
        self._printed, self._last = True, self._clock()

    def close(self) -> None:
        """End the bar; off a terminal, print the last line if any line was printed."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self._printed:
            self._print(done=True)
