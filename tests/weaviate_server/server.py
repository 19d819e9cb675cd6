"""The Weaviate *test server*: REST + gRPC on 127.0.0.1, in threads of the test process.

>>> server = WeaviateTestServer().start()      # doctest: +SKIP
>>> server.url, server.grpc_port                # doctest: +SKIP
('http://127.0.0.1:41234', 41235)
>>> server.faults.add("BatchObjects", grpc.StatusCode.UNAVAILABLE, times=2)  # doctest: +SKIP
>>> server.down(); server.up()                 # doctest: +SKIP
>>> server.stop()                              # doctest: +SKIP

State survives ``down()``/``up()`` (an outage, not a data loss) and lives until
``stop()``. Nothing here is Weaviate: it speaks Weaviate's protocols well enough for
the real weaviate-client to drive it over real sockets.
"""
from __future__ import annotations

import collections
import socket
import threading
from concurrent import futures

import grpc

from .faults import Faults
from .grpc_service import add_services
from .rest import make_http_server
from .state import Database

#: Version reported by /v1/meta: the pinned real server's (load/servers/weaviate.py), so the
#: client takes the same code paths against the double as against real Weaviate.
DEFAULT_VERSION = "1.36.23"
#: What real Weaviate reports as grpcMaxMessageSize by default (~100 MB).
GRPC_MAX_MESSAGE_SIZE = 104_858_000


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WeaviateTestServer:
    """Stateful, in-process Weaviate protocol double with fault injection.

    Args:
        host: interface to listen on (127.0.0.1).
        version: the version /v1/meta reports.
        api_key: when set, every REST and gRPC call must carry ``Bearer <api_key>``.
    """

    def __init__(self, host: str = "127.0.0.1", *, version: str = DEFAULT_VERSION, api_key: str | None = None):
        self.host = host
        self.version = version
        self.api_key = api_key
        self.grpc_max_message_size = GRPC_MAX_MESSAGE_SIZE
        self.db = Database()
        self.faults = Faults()
        self.stopping = threading.Event()
        self.http_port = 0
        self.grpc_port = 0
        self._down = False
        self._calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._http = None
        self._http_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "WeaviateTestServer":
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="wv-test-grpc"),
            options=[
                ("grpc.max_receive_message_length", self.grpc_max_message_size),
                ("grpc.max_send_message_length", self.grpc_max_message_size),
            ],
        )
        add_services(self._grpc, self)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
        self._grpc.start()
        self._http = make_http_server(self, self.host, 0)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="wv-test-http", daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    def __enter__(self) -> "WeaviateTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- outage switch -----------------------------------------------------------------
    def down(self) -> None:
        """Every REST call answers 503 and every gRPC call UNAVAILABLE until :meth:`up`."""
        self._down = True

    def up(self) -> None:
        self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    # -- introspection -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def record(self, protocol: str, name: str) -> None:
        with self._calls_lock:
            self._calls[f"{protocol}:{name}"] += 1

    def calls(self, name: str) -> int:
        """How many times a gRPC method ("BatchObjects") or REST route ("POST /v1/schema") was called."""
        with self._calls_lock:
            return self._calls.get(f"grpc:{name}", 0) + self._calls.get(f"http:{name}", 0)

    def reset_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()

    def object_count(self, collection: str) -> int:
        """Objects stored in a collection (or alias) - read straight from the state, no client."""
        with self.db.lock:
            return len(self.db.resolve(collection).objects)
