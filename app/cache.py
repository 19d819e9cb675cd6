"""A bounded LRU cache of chunk embeddings, keyed by (model fingerprint, chunk hash).

Boilerplate shared by many documents (footers, disclaimers) and re-sent chunks are
encoded once. The key hashes the chunk's token ids, which fully determine its vector
for a given fingerprint (int8 runs one sequence per call, so there is no batch effect).

    >>> import numpy as np
    >>> c = EmbeddingCache(max_entries=2)
    >>> k = c.key("fp", (101, 2023))
    >>> c.get(k) is None
    True
    >>> c.put(k, np.ones(3, np.float32), 1.5)
    >>> c.get(k)[1], c.hits, c.misses
    (1.5, 1, 1)
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np


class EmbeddingCache:
    def __init__(self, max_entries: int = 50_000):
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, tuple[np.ndarray, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(fingerprint: str, token_ids: Sequence[int]) -> bytes:
        h = hashlib.blake2b(fingerprint.encode(), digest_size=16)
        h.update(np.asarray(token_ids, dtype=np.int32).tobytes())
        return h.digest()

    def get(self, key: bytes) -> tuple[np.ndarray, float] | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return hit

    def put(self, key: bytes, vector: np.ndarray, norm: float) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = (vector, norm)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
