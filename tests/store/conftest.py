"""Fixtures of the vector-store tests.

``store_factory`` opens stores of one backend per parametrisation:

* ``lancedb`` - :class:`app.store.lancedb.LanceDBStore` on a temporary directory;
* ``weaviate-test-server`` - :class:`app.store.weaviate.WeaviateStore` against the
  in-process Weaviate *test server* (``tests/weaviate_server``; not a real Weaviate);
* ``weaviate-real`` - the same adapter against a real Weaviate: the session's ``real_weaviate``
  (started from ``load/servers/weaviate.py``; ``WEAVIATE_URL`` points it at an external server,
  see :mod:`tests.store.real_weaviate`). Every test uses its own collection prefix and drops its
  collections afterwards.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from app.store.weaviate import RetryPolicy, WeaviateStore

try:  # `tests` is a package on sys.path only when the repo root is (python -m pytest)
    from tests.store.real_weaviate import unique_prefix
    from tests.weaviate_server import WeaviateTestServer, free_port
except ModuleNotFoundError:  # plain `pytest`: the tests/ directory itself is on sys.path
    from store.real_weaviate import unique_prefix  # type: ignore[no-redef]
    from weaviate_server import WeaviateTestServer, free_port  # type: ignore[no-redef]

__all__ = ["FAST_RETRY", "WeaviateTestServer", "free_port", "open_test_server_store", "unit_vectors"]

#: Retries inside one store call, shrunk so fault tests take milliseconds, not seconds.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors (float32) from a seeded RNG."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def weaviate_server():
    """A fresh Weaviate *test server* (REST + gRPC on free 127.0.0.1 ports) per test."""
    with WeaviateTestServer() as server:
        yield server


def open_test_server_store(server: WeaviateTestServer, **kwargs: Any) -> WeaviateStore:
    """A WeaviateStore on the test server with fast retries (override anything by keyword)."""
    params: dict[str, Any] = {
        "url": server.url,
        "grpc_port": server.grpc_port,
        "fingerprint": "fp-test",
        "dim": 8,
        "timeout_s": 5.0,
        "retry": FAST_RETRY,
    }
    params.update(kwargs)
    return WeaviateStore(**params)


class StoreFactory:
    """Opens stores of one backend; closes them (and cleans real servers) at teardown."""

    def __init__(self, backend: str, opener: Callable[[str, int], Any]):
        self.backend = backend
        self._opener = opener
        self.opened: list[Any] = []

    def __call__(self, fingerprint: str = "fp-A", dim: int = 8) -> Any:
        store = self._opener(fingerprint, dim)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(
    params=[
        "lancedb",
        "weaviate-test-server",
        pytest.param("weaviate-real", marks=pytest.mark.real_weaviate),
    ]
)
def store_factory(request, tmp_path):
    backend = request.param
    cleanup: list[Callable[[], None]] = []

    if backend == "lancedb":
        from app.store.lancedb import LanceDBStore

        def opener(fingerprint: str, dim: int) -> Any:
            return LanceDBStore(
                path=tmp_path / "lance", fingerprint=fingerprint, dim=dim, collection_prefix="embedstream"
            )

    elif backend == "weaviate-test-server":
        server = WeaviateTestServer().start()
        cleanup.append(server.stop)

        def opener(fingerprint: str, dim: int) -> Any:
            return open_test_server_store(server, fingerprint=fingerprint, dim=dim, collection_prefix="Embedstream")

    else:
        rw = request.getfixturevalue("real_weaviate")
        prefix = unique_prefix()

        def opener(fingerprint: str, dim: int) -> Any:
            return rw.store(fingerprint, dim, prefix, retry=FAST_RETRY)

        cleanup.append(lambda: rw.drop_prefix(prefix))

    factory = StoreFactory(backend, opener)
    try:
        yield factory
    finally:
        factory.close_all()
        for fn in reversed(cleanup):
            fn()
