"""gRPC side of the Weaviate *test server*.

Built on the stubs shipped inside weaviate-client (``weaviate.proto.v1`` picks the
generated set that matches the installed protobuf), so requests and replies are the
exact messages the real client sends and parses:

* ``weaviate.v1.Weaviate/BatchObjects`` - upsert by uuid, per-object errors;
* ``weaviate.v1.Weaviate/BatchDelete`` - filter delete, at most 10 000 per call;
* ``weaviate.v1.Weaviate/Search`` - fetch with filters / by id / cursor, near_vector;
* ``weaviate.v1.Weaviate/Aggregate`` - total count with filters;
* ``grpc.health.v1.Health/Check`` - implemented by hand with Weaviate's own
  health messages (grpcio-health-checking is not installed).

Everything else (BatchReferences, BatchStream, TenantsGet, hybrid/bm25/near_text,
group-by, generative, sorting, tenants, aggregations other than the count) answers
``UNIMPLEMENTED``.
"""
from __future__ import annotations

import struct
import time
import uuid as uuid_lib
from typing import TYPE_CHECKING, Any, Callable

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from weaviate.proto.v1 import (  # the generated messages the installed client uses
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

from .state import (
    QUERY_DEFAULTS_LIMIT,
    QUERY_MAXIMUM_RESULTS,
    Collection,
    Invalid,
    NotFound,
    StoredObject,
    Unsupported,
    distance,
)

if TYPE_CHECKING:  # pragma: no cover
    from .server import WeaviateTestServer


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _decode_f32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _to_value(v: Any) -> properties_pb2.Value:
    """Python property value -> properties_pb2.Value (what the client decodes)."""
    if v is None:
        return properties_pb2.Value(null_value=0)
    if isinstance(v, bool):
        return properties_pb2.Value(bool_value=v)
    if isinstance(v, int):
        return properties_pb2.Value(int_value=v)
    if isinstance(v, float):
        return properties_pb2.Value(number_value=v)
    if isinstance(v, str):
        return properties_pb2.Value(text_value=v)
    if isinstance(v, list):
        if not v:
            return properties_pb2.Value(list_value=properties_pb2.ListValue())
        first = v[0]
        if isinstance(first, bool):
            lv = properties_pb2.ListValue(bool_values=properties_pb2.BoolValues(values=v))
        elif isinstance(first, int):
            lv = properties_pb2.ListValue(
                int_values=properties_pb2.IntValues(values=struct.pack(f"<{len(v)}q", *v))
            )
        elif isinstance(first, float):
            lv = properties_pb2.ListValue(
                number_values=properties_pb2.NumberValues(values=struct.pack(f"<{len(v)}d", *v))
            )
        else:
            lv = properties_pb2.ListValue(text_values=properties_pb2.TextValues(values=v))
        return properties_pb2.Value(list_value=lv)
    raise Unsupported(f"cannot encode property value of type {type(v).__name__}")


class WeaviateTestServicer(weaviate_pb2_grpc.WeaviateServicer):
    """The ``weaviate.v1.Weaviate`` service of the test server."""

    def __init__(self, server: "WeaviateTestServer"):
        self._server = server
        self._db = server.db

    # -- plumbing -------------------------------------------------------------
    def _run(self, method: str, context: grpc.ServicerContext, work: Callable[[], Any]) -> Any:
        """Auth, outage switch, injected faults and error mapping around one RPC."""
        self._server.record("grpc", method)
        if self._server.api_key is not None:
            md = dict(context.invocation_metadata())
            if md.get("authorization") != f"Bearer {self._server.api_key}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "test server: missing or wrong API key")
        if self._server.is_down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "test server is down")
        fault = self._server.faults.take_grpc(method)
        if fault is not None:
            if fault.apply_first:
                self._execute(work, context)
            if fault.delay_s:
                self._server.stopping.wait(fault.delay_s)
            context.abort(fault.code, fault.message)
        return self._execute(work, context)

    @staticmethod
    def _execute(work: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        try:
            return work()
        except _Abort as e:
            context.abort(e.code, e.message)
        except Unsupported as e:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"not implemented in the test server: {e}")
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    # -- BatchObjects ----------------------------------------------------------
    def BatchObjects(self, request: batch_pb2.BatchObjectsRequest, context: grpc.ServicerContext):
        return self._run("BatchObjects", context, lambda: self._batch_objects(request))

    def _batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        start = time.perf_counter()
        errors = []
        for index, obj in enumerate(request.objects):
            try:
                self._put_one(obj)
            except (Invalid, NotFound) as e:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=str(e)))
        return batch_pb2.BatchObjectsReply(took=time.perf_counter() - start, errors=errors)

    def _put_one(self, obj: batch_pb2.BatchObject) -> None:
        if obj.tenant:
            raise Unsupported("multi-tenancy")
        injected = self._server.faults.take_object_error(str(uuid_lib.UUID(obj.uuid)))
        if injected is not None:
            raise Invalid(injected)
        p = obj.properties
        if (
            p.single_target_ref_props
            or p.multi_target_ref_props
            or p.object_properties
            or p.object_array_properties
        ):
            raise Unsupported("references and object properties")
        props: dict[str, Any] = MessageToDict(p.non_ref_properties) if p.HasField("non_ref_properties") else {}
        for arr in p.text_array_properties:
            props[arr.prop_name] = list(arr.values)
        for arr in p.int_array_properties:
            props[arr.prop_name] = list(arr.values)
        for arr in p.boolean_array_properties:
            props[arr.prop_name] = list(arr.values)
        for arr in p.number_array_properties:
            props[arr.prop_name] = (
                list(struct.unpack(f"<{len(arr.values_bytes) // 8}d", arr.values_bytes))
                if arr.values_bytes
                else list(arr.values)
            )
        for name in p.empty_list_props:
            props[name] = []
        vectors: dict[str, np.ndarray] = {}
        if obj.vector_bytes:
            vectors[""] = _decode_f32(obj.vector_bytes)
        elif len(obj.vector):
            vectors[""] = np.asarray(obj.vector, dtype=np.float32)
        for named in obj.vectors:
            if named.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise Unsupported("multi-vectors")
            vectors[named.name] = _decode_f32(named.vector_bytes)
        self._db.put_object(obj.collection, obj.uuid, props, vectors)

    # -- BatchDelete -----------------------------------------------------------
    def BatchDelete(self, request: batch_delete_pb2.BatchDeleteRequest, context: grpc.ServicerContext):
        return self._run("BatchDelete", context, lambda: self._batch_delete(request))

    def _batch_delete(self, request: batch_delete_pb2.BatchDeleteRequest) -> batch_delete_pb2.BatchDeleteReply:
        if request.tenant:
            raise Unsupported("multi-tenancy")
        if request.dry_run:
            raise Unsupported("dry_run batch delete")
        if not request.HasField("filters"):
            raise Invalid("batch delete needs a filter")
        start = time.perf_counter()
        with self._db.lock:
            coll = self._db.resolve(request.collection)
            matching = self._db.matching(coll, request.filters)
            matches = matching[:QUERY_MAXIMUM_RESULTS]  # Weaviate reports every match, deletes 10 000
            objects = []
            for obj in matches:
                del coll.objects[obj.uuid]
                if request.verbose:
                    objects.append(
                        batch_delete_pb2.BatchDeleteObject(
                            uuid=uuid_lib.UUID(obj.uuid).bytes, successful=True
                        )
                    )
        return batch_delete_pb2.BatchDeleteReply(
            took=time.perf_counter() - start,
            failed=0,
            matches=len(matching),
            successful=len(matches),
            objects=objects,
        )

    # -- Search ----------------------------------------------------------------
    def Search(self, request: search_get_pb2.SearchRequest, context: grpc.ServicerContext):
        return self._run("Search", context, lambda: self._search(request))

    _UNSUPPORTED_SEARCH_FIELDS = (
        "hybrid_search",
        "bm25_search",
        "near_object",
        "near_text",
        "near_image",
        "near_audio",
        "near_video",
        "near_depth",
        "near_thermal",
        "near_imu",
        "group_by",
        "generative",
        "rerank",
        "boost",
    )

    def _search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        start = time.perf_counter()
        for name in self._UNSUPPORTED_SEARCH_FIELDS:
            if request.HasField(name):
                raise Unsupported(f"search with {name}")
        if request.tenant:
            raise Unsupported("multi-tenancy")
        if request.sort_by:
            raise Unsupported("sort_by")
        if request.autocut:
            raise Unsupported("autocut")
        limit = request.limit or QUERY_DEFAULTS_LIMIT
        offset = request.offset
        if limit + offset > QUERY_MAXIMUM_RESULTS:
            raise Invalid(
                f"query maximum results exceeded: limit ({limit}) + offset ({offset}) "
                f"> QUERY_MAXIMUM_RESULTS ({QUERY_MAXIMUM_RESULTS})"
            )
        if request.after and (request.HasField("filters") or request.HasField("near_vector") or offset):
            raise Invalid("the cursor api (after) cannot be combined with filters, vector search or offset")

        with self._db.lock:
            coll = self._db.resolve(request.collection)
            candidates = self._db.matching(coll, request.filters if request.HasField("filters") else None)
            distances: dict[str, float] = {}
            if request.HasField("near_vector"):
                candidates, distances = self._near_vector(coll, request.near_vector, candidates)
            elif not request.HasField("filters"):
                # Unfiltered listing walks the objects bucket, keyed by uuid (the cursor
                # API relies on that order); filtered results come in docID order.
                candidates = sorted(candidates, key=lambda o: o.uuid)
                if request.after:
                    after = str(uuid_lib.UUID(request.after))
                    candidates = [o for o in candidates if o.uuid > after]
            page = candidates[offset : offset + limit]
            results = [self._result(coll, obj, request, distances.get(obj.uuid)) for obj in page]
        return search_get_pb2.SearchReply(took=time.perf_counter() - start, results=results)

    def _near_vector(
        self, coll: Collection, nv: Any, candidates: list[StoredObject]
    ) -> tuple[list[StoredObject], dict[str, float]]:
        if nv.vector_per_target or nv.vector_for_targets or nv.HasField("selection"):
            raise Unsupported("multi-target / diversity near_vector")
        targets = list(nv.targets.target_vectors) if nv.HasField("targets") else list(nv.target_vectors)
        if len(targets) > 1:
            raise Unsupported("multi-target near_vector")
        names = coll.vector_names()
        if targets:
            vname = targets[0]
        elif coll.named_vectors and len(names) == 1:
            vname = names[0]
        elif not coll.named_vectors:
            vname = ""
        else:
            raise Invalid("multiple vectors configured: near_vector needs a target vector")
        if vname not in names:
            raise Invalid(f"collection {coll.name} has no vector named {vname!r}")
        if len(nv.vectors) > 1:
            raise Unsupported("several query vectors")
        if nv.vectors:
            if nv.vectors[0].type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise Unsupported("multi-vector query")
            query = _decode_f32(nv.vectors[0].vector_bytes)
        elif nv.vector_bytes:
            query = _decode_f32(nv.vector_bytes)
        elif len(nv.vector):
            query = np.asarray(nv.vector, dtype=np.float32)
        else:
            raise Invalid("near_vector without a vector")
        dim = coll.dims.get(vname)
        if dim is not None and dim != query.shape[0]:
            raise Invalid(
                f"vector search: could not vector search: vector lengths don't match: {query.shape[0]} vs {dim}"
            )
        with_vec = [o for o in candidates if vname in o.vectors]
        if not with_vec:
            return [], {}
        metric = coll.index_config(vname)["distance"]
        dists = distance(metric, query, np.stack([o.vectors[vname] for o in with_vec]))
        order = np.argsort(dists, kind="stable")
        ranked = [(with_vec[i], float(dists[i])) for i in order]
        if nv.HasField("distance"):
            ranked = [(o, d) for o, d in ranked if d <= nv.distance]
        if nv.HasField("certainty"):
            if metric != "cosine":
                raise Invalid("certainty is only supported for cosine distance")
            ranked = [(o, d) for o, d in ranked if 1 - d / 2 >= nv.certainty]
        return [o for o, _ in ranked], {o.uuid: d for o, d in ranked}

    def _result(
        self,
        coll: Collection,
        obj: StoredObject,
        request: search_get_pb2.SearchRequest,
        dist: float | None,
    ) -> search_get_pb2.SearchResult:
        # properties
        if request.HasField("properties"):
            pr = request.properties
            if pr.ref_properties or pr.object_properties:
                raise Unsupported("reference / nested property selection")
            wanted = list(coll.props) if pr.return_all_nonref_properties else list(pr.non_ref_properties)
        else:
            wanted = list(coll.props)
        # like Weaviate: a schema property the object lacks (added later) comes back as null
        fields = {name: _to_value(obj.properties.get(name)) for name in wanted
                  if name in obj.properties or name in coll.props}
        props = search_get_pb2.PropertiesResult(
            target_collection=coll.name,
            non_ref_props=properties_pb2.Properties(fields=fields),
        )
        # metadata: id always (the client reads id_as_bytes unconditionally)
        md = request.metadata if request.HasField("metadata") else search_get_pb2.MetadataRequest()
        meta = search_get_pb2.MetadataResult(id=obj.uuid, id_as_bytes=uuid_lib.UUID(obj.uuid).bytes)
        if md.vector or md.vectors:
            names = list(md.vectors) if md.vectors else list(obj.vectors)
            for name in names:
                if name not in obj.vectors:
                    continue
                vec_bytes = obj.vectors[name].astype("<f4").tobytes()
                if name == "":
                    meta.vector_bytes = vec_bytes
                else:
                    meta.vectors.append(
                        base_pb2.Vectors(
                            name=name,
                            vector_bytes=vec_bytes,
                            type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32,
                        )
                    )
        if md.creation_time_unix:
            meta.creation_time_unix = obj.created_ms
            meta.creation_time_unix_present = True
        if md.last_update_time_unix:
            meta.last_update_time_unix = obj.updated_ms
            meta.last_update_time_unix_present = True
        if dist is not None and md.distance:
            meta.distance = dist
            meta.distance_present = True
        if dist is not None and md.certainty:
            meta.certainty = 1 - dist / 2
            meta.certainty_present = True
        if md.score or md.explain_score or md.is_consistent or md.query_profile:
            raise Unsupported("score / explain_score / is_consistent / query_profile metadata")
        return search_get_pb2.SearchResult(properties=props, metadata=meta)

    # -- Aggregate -------------------------------------------------------------
    def Aggregate(self, request: aggregate_pb2.AggregateRequest, context: grpc.ServicerContext):
        return self._run("Aggregate", context, lambda: self._aggregate(request))

    def _aggregate(self, request: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        start = time.perf_counter()
        if request.aggregations or request.HasField("group_by") or request.WhichOneof("search"):
            raise Unsupported("aggregations other than objects_count (group_by, metrics, search)")
        if request.tenant:
            raise Unsupported("multi-tenancy")
        if request.HasField("object_limit") or request.HasField("limit"):
            raise Unsupported("aggregate limit / object_limit")
        with self._db.lock:
            coll = self._db.resolve(request.collection)
            count = len(self._db.matching(coll, request.filters if request.HasField("filters") else None))
        return aggregate_pb2.AggregateReply(
            took=time.perf_counter() - start,
            single_result=aggregate_pb2.AggregateReply.Single(objects_count=count),
        )

    # -- explicitly not implemented ---------------------------------------------
    def BatchReferences(self, request: Any, context: grpc.ServicerContext):
        self._server.record("grpc", "BatchReferences")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented in the test server: BatchReferences")

    def TenantsGet(self, request: Any, context: grpc.ServicerContext):
        self._server.record("grpc", "TenantsGet")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented in the test server: TenantsGet")

    def BatchStream(self, request_iterator: Any, context: grpc.ServicerContext):
        self._server.record("grpc", "BatchStream")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented in the test server: BatchStream")


def health_handler(server: "WeaviateTestServer") -> grpc.GenericRpcHandler:
    """``grpc.health.v1.Health/Check`` answering with Weaviate's health messages."""

    def check(request: Any, context: grpc.ServicerContext) -> health_weaviate_pb2.WeaviateHealthCheckResponse:
        server.record("grpc", "Health/Check")
        if server.is_down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "test server is down")
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
        )

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
            )
        },
    )


def add_services(grpc_server: grpc.Server, server: "WeaviateTestServer") -> None:
    weaviate_pb2_grpc.add_WeaviateServicer_to_server(WeaviateTestServicer(server), grpc_server)
    grpc_server.add_generic_rpc_handlers((health_handler(server),))
