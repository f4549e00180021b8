"""A small LRU bounded by entry count and bytes: the vision tower's output per image.

PaliGemma's prefix attention is bidirectional, so a language-model KV cache cannot be reused
across prompts, but the projected image embeddings depend on the image alone: a second prompt
on the same image skips the vision tower. Values only need `nbytes` (MLX and numpy arrays).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


class FeatureCache(Generic[V]):
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, V] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: V) -> None:
        """Keep `value` unless caching is off or it alone exceeds the byte budget."""
        if self.max_entries <= 0 or value.nbytes > self.max_bytes:
            return
        if key in self._entries:
            self.bytes -= self._entries.pop(key).nbytes
        self._entries[key] = value
        self.bytes += value.nbytes
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
