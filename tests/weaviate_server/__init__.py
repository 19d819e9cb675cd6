"""A protocol-level Weaviate **test server** for embedstream's tests.

This is *not* Weaviate and tests using it are *not* integration tests with a real
Weaviate. It is a stateful, in-process double that speaks Weaviate's REST and gRPC
protocols (using the protobuf stubs shipped inside weaviate-client), so that the real
client library can be driven over real sockets - no client method is mocked - and
faults (gRPC status codes, deadlines, HTTP 5xx, per-object batch errors, a whole-server
outage) can be injected deterministically.

Everything a real server can be made to do runs on a real Weaviate (``load/servers/weaviate.py``,
the ``real_weaviate`` session fixture): the contract suite, the worker, replay, reindex, search,
outages by SIGSTOP/SIGKILL. This double stays only for what a real server cannot be made to do on
demand, and these tests still need it:

* ``tests/store/test_weaviate_adapter.py``: exact gRPC status codes on chosen calls
  (UNAVAILABLE, DEADLINE_EXCEEDED a chosen number of times, a reply lost after the write),
  per-object errors on chosen objects (transient and permanent, across batches, keyed by doc id),
  REST 5xx during start-up, a 404 race on schema creation, a server without alias support, the
  API key echoed in an injected error message;
* ``tests/store/test_weaviate_both.py``: runs on both, so the double is checked against the real
  server (its docstring lists the differences found and fixed).

See :mod:`.server` for the entry point, :mod:`.state` for the modelled semantics and
:mod:`.faults` for fault injection.
"""
from .faults import Faults
from .server import DEFAULT_VERSION, WeaviateTestServer, free_port
from .state import QUERY_DEFAULTS_LIMIT, QUERY_MAXIMUM_RESULTS

__all__ = [
    "DEFAULT_VERSION",
    "Faults",
    "QUERY_DEFAULTS_LIMIT",
    "QUERY_MAXIMUM_RESULTS",
    "WeaviateTestServer",
    "free_port",
]
