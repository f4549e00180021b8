from __future__ import annotations

import numpy as np

from app.model.feature_cache import FeatureCache


def array(n_bytes: int) -> np.ndarray:
    return np.zeros(n_bytes, np.uint8)


def test_lru_by_count() -> None:
    cache: FeatureCache[np.ndarray] = FeatureCache(max_entries=2, max_bytes=1000)
    cache.put("a", array(10))
    cache.put("b", array(10))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", array(10))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (cache.hits, cache.misses) == (3, 1)


def test_lru_by_bytes() -> None:
    cache: FeatureCache[np.ndarray] = FeatureCache(max_entries=10, max_bytes=100)
    for key in "abc":
        cache.put(key, array(40))
    assert len(cache) == 2 and cache.bytes == 80 and cache.get("a") is None


def test_replacing_a_key_keeps_the_byte_count_right() -> None:
    cache: FeatureCache[np.ndarray] = FeatureCache(max_entries=10, max_bytes=100)
    cache.put("a", array(40))
    cache.put("a", array(30))
    assert len(cache) == 1 and cache.bytes == 30


def test_disabled_or_oversized_values_are_not_kept() -> None:
    off: FeatureCache[np.ndarray] = FeatureCache(max_entries=0, max_bytes=100)
    off.put("a", array(1))
    assert len(off) == 0
    small: FeatureCache[np.ndarray] = FeatureCache(max_entries=4, max_bytes=10)
    small.put("a", array(11))
    assert len(small) == 0 and small.bytes == 0
