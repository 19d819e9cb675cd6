"""Fault injection for the Weaviate *test server*.

Tests arm faults on ``server.faults`` and the transports consult it on every call:

>>> import grpc
>>> faults = Faults()
>>> faults.add(method="BatchObjects", code=grpc.StatusCode.UNAVAILABLE, times=2)
>>> faults.take_grpc("BatchObjects").code.name, faults.take_grpc("BatchObjects").code.name
('UNAVAILABLE', 'UNAVAILABLE')
>>> faults.take_grpc("BatchObjects") is None
True
>>> faults.object_error("00000000-0000-0000-0000-000000000001", "store is read-only", times=1)
>>> faults.take_object_error("00000000-0000-0000-0000-000000000001")
'store is read-only'
>>> faults.take_object_error("00000000-0000-0000-0000-000000000001") is None
True
"""
from __future__ import annotations

import threading
import uuid as uuid_lib
from dataclasses import dataclass

import grpc


@dataclass
class GrpcFault:
    """Fail the next ``times`` calls of gRPC ``method`` (None = any method) with ``code``.

    ``delay_s`` sleeps before failing (use it with DEADLINE_EXCEEDED and a delay longer
    than the client's timeout to produce a real client-side deadline). With
    ``apply_first`` the request is executed *before* the delay and the failure, which
    models "the write happened but the answer was lost".
    """

    method: str | None
    code: grpc.StatusCode
    times: int | None
    delay_s: float = 0.0
    message: str = ""
    apply_first: bool = False


@dataclass
class HttpFault:
    """Answer the next ``times`` REST requests whose path starts with ``path`` with ``status``."""

    path: str
    status: int
    times: int | None
    http_method: str | None = None
    message: str = ""


@dataclass
class ObjectFault:
    """Per-object batch error for one uuid (``times`` None = for ever)."""

    message: str
    times: int | None


class Faults:
    """Thread-safe registry of armed faults; ``times=None`` means until cleared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grpc: list[GrpcFault] = []
        self._http: list[HttpFault] = []
        self._objects: dict[str, ObjectFault] = {}

    # -- arming ---------------------------------------------------------------
    def add(
        self,
        method: str | None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        times: int | None = 1,
        *,
        delay_s: float = 0.0,
        message: str | None = None,
        apply_first: bool = False,
    ) -> GrpcFault:
        """Arm a gRPC fault (``method`` like "BatchObjects", "Search", "Aggregate", "BatchDelete")."""
        fault = GrpcFault(
            method=method,
            code=code,
            times=times,
            delay_s=delay_s,
            message=message or f"test server: injected {code.name}",
            apply_first=apply_first,
        )
        with self._lock:
            self._grpc.append(fault)
        return fault

    def add_http(
        self,
        path: str,
        status: int = 503,
        times: int | None = 1,
        *,
        http_method: str | None = None,
        message: str | None = None,
    ) -> HttpFault:
        """Arm a REST fault for paths starting with ``path`` (e.g. "/v1/schema")."""
        fault = HttpFault(
            path=path,
            status=status,
            times=times,
            http_method=http_method.upper() if http_method else None,
            message=message or f"test server: injected HTTP {status}",
        )
        with self._lock:
            self._http.append(fault)
        return fault

    def object_error(self, uuid: str, message: str, times: int | None = None) -> None:
        """Make the batch path report ``message`` for this object id (``times`` None = always)."""
        with self._lock:
            self._objects[str(uuid_lib.UUID(str(uuid)))] = ObjectFault(message=message, times=times)

    def clear(self) -> None:
        with self._lock:
            self._grpc.clear()
            self._http.clear()
            self._objects.clear()

    # -- consuming (used by the transports) -------------------------------------
    def take_grpc(self, method: str) -> GrpcFault | None:
        with self._lock:
            for fault in self._grpc:
                if fault.method is None or fault.method == method:
                    self._consume(self._grpc, fault)
                    return fault
        return None

    def take_http(self, http_method: str, path: str) -> HttpFault | None:
        with self._lock:
            for fault in self._http:
                if path.startswith(fault.path) and fault.http_method in (None, http_method):
                    self._consume(self._http, fault)
                    return fault
        return None

    def take_object_error(self, uuid: str) -> str | None:
        with self._lock:
            fault = self._objects.get(uuid)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._objects[uuid]
            return fault.message

    @staticmethod
    def _consume(faults: list, fault: GrpcFault | HttpFault) -> None:
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                faults.remove(fault)
