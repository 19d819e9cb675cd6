"""A protocol-level Weaviate **test server** for embedstream's tests.

This is *not* Weaviate and tests using it are *not* integration tests with a real
Weaviate. It is a stateful, in-process double that speaks Weaviate's REST and gRPC
protocols (using the protobuf stubs shipped inside weaviate-client), so that the real
client library can be driven over real sockets - no client method is mocked - and
faults (gRPC status codes, deadlines, HTTP 5xx, per-object batch errors, a whole-server
outage) can be injected deterministically. The contract suite runs the same tests
against a real Weaviate when ``WEAVIATE_URL`` is set.

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
