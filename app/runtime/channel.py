"""The one bridge from the MLX thread back to the event loop: a channel per request.

The thread `put`s each event and `close`s the channel (with the error that ended it, if any);
the loop reads them in order with `get`. Nothing on the thread calls back into request code:
values only cross here, so ordering and cancellation have one place to be right.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _End:
    error: BaseException | None


class Channel(Generic[T]):
    """Events of one request from a worker thread to the loop that made the channel."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self.cancelled = threading.Event()  # set by the loop: the thread stops at the next token

    # -- the worker thread's side --------------------------------------------------------------
    def put(self, item: T) -> None:
        self._send(item)

    def close(self, error: BaseException | None = None) -> None:
        self._send(_End(error))

    def _send(self, message: T | _End) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, message)
        except RuntimeError:  # the loop is gone (a Segmenter closed mid-request): nobody reads
            self.cancelled.set()

    # -- the loop's side -----------------------------------------------------------------------
    async def get(self) -> T:
        """The next event; StopAsyncIteration after a clean close, the error after a failed one."""
        message = await self._queue.get()
        if isinstance(message, _End):
            self._queue.put_nowait(message)  # stays closed for any later read
            if message.error is not None:
                raise message.error
            raise StopAsyncIteration
        return message
