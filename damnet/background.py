"""Overlapping I/O with compute: a producer thread ahead of the caller, a consumer behind it.

:func:`prefetched` runs an iterator in a background thread, a bounded number of items
ahead (reading the next windows while the model runs); :class:`Behind` hands items to a
function in a background thread, in order (blending and writing finished rows). Both keep
memory bounded by their queue depth, re-raise the worker's exception in the caller's
thread, and with depth 0 run everything in the caller's thread (same results, no threads).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Generic, TypeVar

import rasterio
import rasterio.env
import rasterio.session

T = TypeVar("T")


_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class _Keys(rasterio.session.Session):
    """The caller's AWS keys, handed to a thread's :class:`rasterio.Env` (which takes them only
    from a session)."""

    def __init__(self, keys: dict) -> None:
        self.keys = keys

    def get_credential_options(self) -> dict:
        return dict(self.keys)


def _caller_env() -> rasterio.Env:
    """A :class:`rasterio.Env` with the GDAL options of the calling thread's environment."""
    options = rasterio.env.getenv() if rasterio.env.hasenv() else {}
    keys = {k: options.pop(k) for k in _KEYS if k in options}
    return rasterio.Env(session=_Keys(keys), **options) if keys else rasterio.Env(**options)


def prefetched(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``items``, produced in a background thread at most ``depth`` items ahead of the caller.

    An exception of the producer is raised here; when the caller stops early, the thread
    stops too. The GDAL options of the caller's :class:`rasterio.Env` (e.g. ``/vsis3/``
    credentials) are set in the thread as well. ``depth`` 0: no thread, plain iteration.
    """
    if depth <= 0:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    env = _caller_env()

    def offer(item: tuple) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with env:
                for item in items:
                    if not offer((True, item)):
                        return
            offer((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            offer((False, exc))

    thread = threading.Thread(target=work, name="damnet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            more, item = box.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


class _Cancelled(Exception):
    """Marks a :class:`Behind` whose caller gave up: the items left are skipped."""


class Behind(Generic[T]):
    """Calls ``fn(item)`` for every :meth:`put` item, in order, in a background thread (at
    most ``depth`` items waiting); ``depth`` 0 calls it at once. :meth:`close` waits for the
    last item; an exception of ``fn`` is raised by the next :meth:`put` or by :meth:`close`."""

    _END = object()

    def __init__(self, fn: Callable[[T], object], depth: int) -> None:
        self.fn = fn
        self.error: BaseException | None = None
        self.box: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.thread: threading.Thread | None = None
        if depth > 0:
            self.thread = threading.Thread(target=self._work, name="damnet-writer", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        while (item := self.box.get()) is not self._END:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def put(self, item: T) -> None:
        if self.thread is None:
            self.fn(item)
            return
        self._raise()
        self.box.put(item)

    def close(self, wait: bool = True) -> None:
        """Let the thread finish the items given and end; with ``wait`` False (the caller
        is failing), skip the items still waiting and raise nothing."""
        if not wait and self.error is None:
            self.error = _Cancelled()
        if self.thread is not None:
            self.box.put(self._END)
            self.thread.join()
            self.thread = None
        if wait:
            self._raise()
        self.error = None
