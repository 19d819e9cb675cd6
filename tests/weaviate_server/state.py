"""In-memory data model of the Weaviate *test server*: schema, objects, aliases, filters.

This is a test double, not Weaviate. It keeps the parts of Weaviate's behaviour that
the embedstream adapter depends on and that are easy to get wrong in a client:

* class names start with an upper-case letter (the first letter is capitalised on
  create, like Weaviate does) and match ``^[A-Z][_0-9A-Za-z]*$``;
* objects are replaced by id (a batch upsert of an existing uuid overwrites it);
* text filters compare *tokens* according to the property's tokenization: ``field``
  compares the whole (trimmed) value, ``word`` splits on non-alphanumerics and
  lower-cases, so ``Equal("doc-1")`` matches ``"doc-1-extra"`` under ``word``;
* a query without a limit returns at most ``QUERY_DEFAULTS_LIMIT`` (10) objects, and
  ``limit + offset`` may not exceed ``QUERY_MAXIMUM_RESULTS`` (10 000);
* unfiltered listings come in uuid order (the cursor ``after`` relies on it), filtered
  ones in insertion order (an update re-inserts, like Weaviate's new docID);
* one batch delete removes at most ``QUERY_MAXIMUM_RESULTS`` objects;
* a vector index fixes its dimension with the first vector it receives.

Anything outside that subset raises :class:`Unsupported`, which the transports turn
into gRPC ``UNIMPLEMENTED`` / HTTP 501 so that a test relying on it fails loudly.
"""
from __future__ import annotations

import copy
import re
import threading
import time
import uuid as uuid_lib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

QUERY_DEFAULTS_LIMIT = 10
QUERY_MAXIMUM_RESULTS = 10_000

CLASS_NAME_RE = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
PROPERTY_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")

#: Weaviate's HNSW defaults as returned by GET /v1/schema (so the client can parse them).
HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False,
    "cleanupIntervalSeconds": 300,
    "maxConnections": 32,
    "efConstruction": 128,
    "ef": -1,
    "dynamicEfMin": 100,
    "dynamicEfMax": 500,
    "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1_000_000_000_000,
    "flatSearchCutoff": 40_000,
    "distance": "cosine",
    "pq": {"enabled": False},
    "bq": {"enabled": False},
    "sq": {"enabled": False},
    "filterStrategy": "sweeping",
}
FLAT_DEFAULTS: dict[str, Any] = {
    "distance": "cosine",
    "vectorCacheMaxObjects": 1_000_000_000_000,
    "pq": {"enabled": False},
    "bq": {"enabled": False},
}
SUPPORTED_DISTANCES = ("cosine", "dot", "l2-squared")
TEXT_TYPES = ("text", "string")
SUPPORTED_TYPES = ("text", "int", "number", "boolean", "text[]", "int[]", "number[]", "boolean[]")


class Unsupported(Exception):
    """A feature this test server does not implement (-> UNIMPLEMENTED / HTTP 501)."""


class NotFound(Exception):
    """Unknown collection, alias or object (-> 404 / gRPC error)."""


class Invalid(Exception):
    """A request Weaviate would refuse (-> 422 / gRPC error)."""


# ---------------------------------------------------------------------------
# tokenization


#: what Go's ``strings.TrimSpace`` trims (``unicode.IsSpace``): Weaviate's ``field`` tokenisation.
#: Python's ``str.strip`` also trims U+001C..U+001F, which Go keeps.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"


def tokenize(value: str, tokenization: str) -> list[str]:
    """Split ``value`` into the tokens Weaviate's inverted index would store."""
    if tokenization == "field":
        stripped = value.strip(GO_SPACE)
        return [stripped] if stripped else []
    if tokenization == "word":
        # runs of letters and digits (Go: unicode.IsLetter / IsNumber), lower-cased; everything
        # else separates - "_", punctuation, and invisible characters such as U+200B as well
        return [t.lower() for t in re.findall(r"[^\W_]+", value)]
    if tokenization == "lowercase":
        return [t.lower() for t in value.split()]
    if tokenization == "whitespace":
        return value.split()
    raise Unsupported(f"tokenization {tokenization!r} is not implemented in the test server")


# ---------------------------------------------------------------------------
# schema


def _normalise_property(prop: dict[str, Any]) -> dict[str, Any]:
    name = prop.get("name", "")
    if not PROPERTY_NAME_RE.match(name):
        raise Invalid(f"'{name}' is not a valid property name")
    data_type = prop.get("dataType") or []
    if len(data_type) != 1 or data_type[0] not in SUPPORTED_TYPES:
        raise Unsupported(f"property {name!r}: dataType {data_type!r} is not implemented in the test server")
    dt = data_type[0]
    out: dict[str, Any] = {"name": name, "dataType": [dt]}
    if prop.get("description"):
        out["description"] = prop["description"]
    is_text = dt in ("text", "text[]")
    out["indexFilterable"] = prop.get("indexFilterable", True)
    out["indexSearchable"] = prop.get("indexSearchable", is_text)
    out["indexRangeFilters"] = prop.get("indexRangeFilters", False)
    if is_text:
        tok = prop.get("tokenization") or "word"
        tokenize("x", tok)  # raises Unsupported for tokenizations we do not model
        out["tokenization"] = tok
    elif prop.get("tokenization"):
        raise Invalid(f"tokenization is not allowed for data type {dt!r} (property {name!r})")
    if prop.get("nestedProperties"):
        raise Unsupported("nested properties are not implemented in the test server")
    return out


def _normalise_index(index_type: str, config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    if index_type == "hnsw":
        merged = {**copy.deepcopy(HNSW_DEFAULTS), **config}
    elif index_type == "flat":
        merged = {**copy.deepcopy(FLAT_DEFAULTS), **config}
    else:
        raise Unsupported(f"vectorIndexType {index_type!r} is not implemented in the test server")
    if merged["distance"] not in SUPPORTED_DISTANCES:
        raise Unsupported(f"distance {merged['distance']!r} is not implemented in the test server")
    return merged


def normalise_class(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a POST /v1/schema body and fill in Weaviate's defaults."""
    name = body.get("class") or ""
    if name:
        name = name[0].upper() + name[1:]
    if not CLASS_NAME_RE.match(name):
        raise Invalid(f"'{body.get('class')}' is not a valid class name")
    if body.get("multiTenancyConfig", {}).get("enabled"):
        raise Unsupported("multi-tenancy is not implemented in the test server")
    props = [_normalise_property(p) for p in body.get("properties") or []]
    names = [p["name"].lower() for p in props]
    if len(set(names)) != len(names):
        raise Invalid("duplicate property names")
    cls: dict[str, Any] = {
        "class": name,
        "description": body.get("description", ""),
        "properties": props,
        "invertedIndexConfig": {
            "bm25": {"b": 0.75, "k1": 1.2},
            "cleanupIntervalSeconds": 60,
            "stopwords": {"preset": "en", "additions": None, "removals": None},
            "usingBlockMaxWAND": True,
            **(body.get("invertedIndexConfig") or {}),
        },
        "multiTenancyConfig": {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False},
        "replicationConfig": {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"},
        "shardingConfig": {
            "virtualPerPhysical": 128,
            "desiredCount": 1,
            "actualCount": 1,
            "desiredVirtualCount": 128,
            "actualVirtualCount": 128,
            "key": "_id",
            "strategy": "hash",
            "function": "murmur3",
        },
    }
    if body.get("vectorConfig"):
        vc: dict[str, Any] = {}
        for vname, spec in body["vectorConfig"].items():
            vectorizer = spec.get("vectorizer") or {"none": {}}
            if list(vectorizer) != ["none"]:
                raise Unsupported(f"vectorizer {list(vectorizer)} is not implemented in the test server")
            itype = spec.get("vectorIndexType") or "hnsw"
            vc[vname] = {
                "vectorizer": {"none": {}},
                "vectorIndexType": itype,
                "vectorIndexConfig": _normalise_index(itype, spec.get("vectorIndexConfig")),
            }
        cls["vectorConfig"] = vc
    else:
        vectorizer = body.get("vectorizer", "none")
        if vectorizer != "none":
            raise Unsupported(f"vectorizer {vectorizer!r} is not implemented in the test server")
        itype = body.get("vectorIndexType") or "hnsw"
        cls["vectorizer"] = "none"
        cls["vectorIndexType"] = itype
        cls["vectorIndexConfig"] = _normalise_index(itype, body.get("vectorIndexConfig"))
    return cls


# ---------------------------------------------------------------------------
# objects and collections


@dataclass
class StoredObject:
    uuid: str
    properties: dict[str, Any]
    vectors: dict[str, np.ndarray]  # "" is the legacy unnamed vector
    created_ms: int
    updated_ms: int


@dataclass
class Collection:
    config: dict[str, Any]
    objects: dict[str, StoredObject] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config["class"]

    @property
    def props(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.config["properties"]}

    @property
    def named_vectors(self) -> bool:
        return "vectorConfig" in self.config

    def vector_names(self) -> list[str]:
        return list(self.config["vectorConfig"]) if self.named_vectors else [""]

    def index_config(self, vector_name: str) -> dict[str, Any]:
        if self.named_vectors:
            return self.config["vectorConfig"][vector_name]["vectorIndexConfig"]
        return self.config["vectorIndexConfig"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def coerce_properties(coll: Collection, raw: dict[str, Any]) -> dict[str, Any]:
    """Type-check incoming properties against the schema (auto-schema is off)."""
    schema = coll.props
    out: dict[str, Any] = {}
    for key, value in raw.items():
        prop = schema.get(key)
        if prop is None:
            raise Invalid(f"no such prop with name '{key}' found in class '{coll.name}' in the schema")
        dt = prop["dataType"][0]
        if value is None:
            out[key] = None
            continue
        if dt == "text":
            ok = isinstance(value, str)
        elif dt == "int":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
            value = int(value) if ok else value
        elif dt == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif dt == "boolean":
            ok = isinstance(value, bool)
        elif dt == "text[]":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif dt == "int[]":
            ok = isinstance(value, list) and all(float(v).is_integer() for v in value)
            value = [int(v) for v in value] if ok else value
        elif dt == "number[]":
            ok = isinstance(value, list)
            value = [float(v) for v in value] if ok else value
        else:  # boolean[]
            ok = isinstance(value, list) and all(isinstance(v, bool) for v in value)
        if not ok:
            raise Invalid(
                f"invalid {dt} property '{key}' on class '{coll.name}': requires a {dt}, got {type(value).__name__}"
            )
        out[key] = value
    return out


# ---------------------------------------------------------------------------
# filters (decoded from base_pb2.Filters)

OP_EQUAL, OP_NOT_EQUAL, OP_GT, OP_GTE, OP_LT, OP_LTE = 1, 2, 3, 4, 5, 6
OP_AND, OP_OR, OP_GEO, OP_LIKE, OP_IS_NULL = 7, 8, 9, 10, 11
OP_CONTAINS_ANY, OP_CONTAINS_ALL, OP_CONTAINS_NONE, OP_NOT = 12, 13, 14, 15

Predicate = Callable[[StoredObject], bool]


def _filter_value(f: Any) -> Any:
    kind = f.WhichOneof("test_value")
    if kind is None:
        return None
    if kind == "value_text":
        return f.value_text
    if kind == "value_int":
        return f.value_int
    if kind == "value_boolean":
        return f.value_boolean
    if kind == "value_number":
        return f.value_number
    if kind in ("value_text_array", "value_int_array", "value_boolean_array", "value_number_array"):
        return list(getattr(f, kind).values)
    raise Unsupported(f"filter value {kind} is not implemented in the test server")


def _filter_property(f: Any) -> str:
    if f.HasField("target"):
        which = f.target.WhichOneof("target")
        if which != "property":
            raise Unsupported("reference / count filters are not implemented in the test server")
        return f.target.property
    if len(f.on) == 1:
        return f.on[0]
    raise Unsupported(f"filter path {list(f.on)} is not implemented in the test server")


def compile_filter(coll: Collection, f: Any) -> Predicate:
    """Turn a ``base_pb2.Filters`` message into a predicate over stored objects."""
    op = f.operator
    if op in (OP_AND, OP_OR):
        subs = [compile_filter(coll, s) for s in f.filters]
        if not subs:
            raise Invalid("And/Or filter without operands")
        if op == OP_AND:
            return lambda o: all(s(o) for s in subs)
        return lambda o: any(s(o) for s in subs)
    if op == OP_NOT:
        if len(f.filters) != 1:
            raise Invalid("Not filter needs exactly one operand")
        sub = compile_filter(coll, f.filters[0])
        return lambda o: not sub(o)
    if op in (OP_GEO, OP_LIKE):
        raise Unsupported(f"filter operator {op} is not implemented in the test server")

    prop = _filter_property(f)
    value = _filter_value(f)

    if prop == "_id":
        if op in (OP_EQUAL, OP_NOT_EQUAL):
            target = str(uuid_lib.UUID(value))
            eq: Predicate = lambda o: o.uuid == target  # noqa: E731
            return eq if op == OP_EQUAL else (lambda o: not eq(o))
        if op in (OP_CONTAINS_ANY, OP_CONTAINS_NONE):
            targets = {str(uuid_lib.UUID(v)) for v in value}
            if op == OP_CONTAINS_ANY:
                return lambda o: o.uuid in targets
            return lambda o: o.uuid not in targets
        raise Unsupported(f"operator {op} on _id is not implemented in the test server")
    if prop.startswith("_"):
        raise Unsupported(f"filtering on {prop} is not implemented in the test server")

    schema = coll.props.get(prop)
    if schema is None:
        raise Invalid(f"no such prop with name '{prop}' found in class '{coll.name}' in the schema")
    if op == OP_IS_NULL:
        want_null = bool(value)
        return lambda o: (o.properties.get(prop) is None) == want_null
    if not schema.get("indexFilterable", True):
        raise Invalid(
            f"Filtering by property '{prop}' requires inverted index. "
            f"Is `indexFilterable` option of property '{prop}' enabled?"
        )
    dt = schema["dataType"][0]

    if dt in ("text", "text[]"):
        tok = schema["tokenization"]

        def obj_tokens(o: StoredObject) -> set[str]:
            v = o.properties.get(prop)
            if v is None:
                return set()
            values = v if isinstance(v, list) else [v]
            return {t for item in values for t in tokenize(item, tok)}

        if op in (OP_EQUAL, OP_NOT_EQUAL):
            if not isinstance(value, str):
                raise Invalid(f"text property '{prop}' needs a text filter value")
            wanted = set(tokenize(value, tok))
            eq = lambda o: bool(wanted) and wanted <= obj_tokens(o)  # noqa: E731
            return eq if op == OP_EQUAL else (lambda o: not eq(o))
        if op in (OP_CONTAINS_ANY, OP_CONTAINS_ALL, OP_CONTAINS_NONE):
            values = value if isinstance(value, list) else [value]
            tokens = {t for v in values for t in tokenize(str(v), tok)}
            if op == OP_CONTAINS_ANY:
                return lambda o: bool(tokens & obj_tokens(o))
            if op == OP_CONTAINS_ALL:
                return lambda o: tokens <= obj_tokens(o)
            return lambda o: not (tokens & obj_tokens(o))
        raise Unsupported(f"operator {op} on text is not implemented in the test server")

    # int / number / boolean (and their arrays): compare values directly
    def obj_values(o: StoredObject) -> list[Any]:
        v = o.properties.get(prop)
        if v is None:
            return []
        return v if isinstance(v, list) else [v]

    compare: dict[int, Callable[[Any, Any], bool]] = {
        OP_EQUAL: lambda a, b: a == b,
        OP_GT: lambda a, b: a > b,
        OP_GTE: lambda a, b: a >= b,
        OP_LT: lambda a, b: a < b,
        OP_LTE: lambda a, b: a <= b,
    }
    if dt.startswith("boolean") and op not in (OP_EQUAL, OP_NOT_EQUAL, OP_CONTAINS_ANY,
                                               OP_CONTAINS_ALL, OP_CONTAINS_NONE):
        raise Invalid(f"operator {op} is not valid on boolean property '{prop}'")
    if op in compare:
        if isinstance(value, list) or value is None:
            raise Invalid(f"operator {op} needs a single value")
        cmp = compare[op]
        return lambda o: any(cmp(v, value) for v in obj_values(o))
    if op == OP_NOT_EQUAL:
        return lambda o: not any(v == value for v in obj_values(o))
    if op in (OP_CONTAINS_ANY, OP_CONTAINS_ALL, OP_CONTAINS_NONE):
        wanted_vals = value if isinstance(value, list) else [value]
        if op == OP_CONTAINS_ANY:
            return lambda o: any(v in wanted_vals for v in obj_values(o))
        if op == OP_CONTAINS_ALL:
            return lambda o: all(w in obj_values(o) for w in wanted_vals)
        return lambda o: not any(v in wanted_vals for v in obj_values(o))
    raise Unsupported(f"filter operator {op} is not implemented in the test server")


# ---------------------------------------------------------------------------
# vector distances


def distance(metric: str, a: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Distances between query ``a`` and each row of ``matrix`` with Weaviate's definitions."""
    if metric == "cosine":
        na = float(np.linalg.norm(a)) or 1.0
        nm = np.linalg.norm(matrix, axis=1)
        nm[nm == 0] = 1.0
        return 1.0 - (matrix @ a) / (nm * na)
    if metric == "dot":
        return -(matrix @ a)
    if metric == "l2-squared":
        diff = matrix - a
        return np.einsum("ij,ij->i", diff, diff)
    raise Unsupported(f"distance {metric!r} is not implemented in the test server")


# ---------------------------------------------------------------------------
# the database


class Database:
    """All state of one test server; every public method is thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.collections: dict[str, Collection] = {}
        self.aliases: dict[str, str] = {}

    # -- schema -------------------------------------------------------------
    def create_class(self, body: dict[str, Any]) -> dict[str, Any]:
        cls = normalise_class(body)
        with self.lock:
            name = cls["class"]
            if any(n.lower() == name.lower() for n in self.collections):
                raise Invalid(f"class name {name} already exists")
            if name in self.aliases:
                raise Invalid(f"alias name {name} already exists")
            self.collections[name] = Collection(config=cls)
            return copy.deepcopy(cls)

    def get_class(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            coll = self.collections.get(name)
            return copy.deepcopy(coll.config) if coll else None

    def list_classes(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(c.config) for c in self.collections.values()]

    def delete_class(self, name: str) -> None:
        """Like Weaviate 1.36: an alias of the deleted collection stays, pointing at nothing."""
        with self.lock:
            self.collections.pop(name, None)

    def add_property(self, name: str, prop: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/schema/{name}/properties: stored objects read the new property as null."""
        with self.lock:
            coll = self.resolve(name)
            new = _normalise_property(prop)
            if new["name"].lower() in (p.lower() for p in coll.props):
                raise Invalid(f"property {new['name']!r} already exists in class {coll.name}")
            coll.config["properties"].append(new)
            return copy.deepcopy(new)

    def resolve(self, name: str) -> Collection:
        """Collection by name or alias (the lock must be held)."""
        target = self.aliases.get(name, name)
        coll = self.collections.get(target)
        if coll is None:
            raise NotFound(f"could not find class {name} in schema")
        return coll

    # -- aliases ------------------------------------------------------------
    def create_alias(self, alias: str, target: str) -> None:
        with self.lock:
            if not CLASS_NAME_RE.match(alias or ""):
                raise Invalid(f"'{alias}' is not a valid alias name")
            if alias in self.aliases:
                raise Invalid(f'alias "{alias}" already exists')
            if alias in self.collections:
                raise Invalid(f"create alias: class {alias} already exists")
            if target not in self.collections:
                raise Invalid("class does not exist: bad request")  # Weaviate answers 422
            self.aliases[alias] = target

    def update_alias(self, alias: str, target: str) -> None:
        with self.lock:
            if alias not in self.aliases:
                raise NotFound(f'alias "{alias}" not found')
            if target not in self.collections:
                raise NotFound(f"could not find class {target} in schema")
            self.aliases[alias] = target

    def delete_alias(self, alias: str) -> bool:
        with self.lock:
            return self.aliases.pop(alias, None) is not None

    # -- objects ------------------------------------------------------------
    def put_object(
        self,
        collection: str,
        obj_uuid: str,
        properties: dict[str, Any],
        vectors: dict[str, np.ndarray],
    ) -> None:
        """Insert or replace one object (the batch path and POST /v1/objects)."""
        with self.lock:
            coll = self.resolve(collection)
            obj_uuid = str(uuid_lib.UUID(obj_uuid))
            props = coerce_properties(coll, properties)
            names = coll.vector_names()
            if "" in vectors and coll.named_vectors and len(names) == 1:
                vectors = {names[0]: vectors.pop(""), **vectors}  # Weaviate: the only named vector
            for vname, vec in vectors.items():
                if vname not in names:
                    if vname == "" and coll.named_vectors:
                        raise Invalid(
                            f"collection {coll.name} is configured with named vectors; "
                            "an unnamed vector is not accepted"
                        )
                    raise Invalid(f"collection {coll.name} has no vector named {vname!r}")
                idx_cfg = coll.index_config(vname)
                if idx_cfg.get("skip"):
                    continue  # vector index skipped: Weaviate stores no vector
                dim = coll.dims.get(vname)
                if dim is not None and dim != vec.shape[0]:
                    raise Invalid(
                        f"new node has a vector with length {vec.shape[0]}. "
                        f"Existing nodes have vectors with length {dim}"
                    )
            now = _now_ms()
            kept: dict[str, np.ndarray] = {}
            for vname, vec in vectors.items():
                if coll.index_config(vname).get("skip"):
                    continue
                coll.dims.setdefault(vname, vec.shape[0])
                kept[vname] = vec.astype(np.float32)
            old = coll.objects.pop(obj_uuid, None)  # re-insert at the end, like a new docID
            coll.objects[obj_uuid] = StoredObject(
                uuid=obj_uuid,
                properties=props,
                vectors=kept,
                created_ms=old.created_ms if old else now,
                updated_ms=now,
            )

    def get_object(self, collection: str, obj_uuid: str) -> StoredObject | None:
        with self.lock:
            coll = self.resolve(collection)
            return coll.objects.get(str(uuid_lib.UUID(obj_uuid)))

    def delete_object(self, collection: str, obj_uuid: str) -> bool:
        with self.lock:
            coll = self.resolve(collection)
            return coll.objects.pop(str(uuid_lib.UUID(obj_uuid)), None) is not None

    def matching(self, coll: Collection, filters: Any | None) -> list[StoredObject]:
        """Objects of ``coll`` matching ``filters`` (a base_pb2.Filters or None), in storage order."""
        objs: Iterable[StoredObject] = coll.objects.values()
        if filters is None:
            return list(objs)
        pred = compile_filter(coll, filters)
        return [o for o in objs if pred(o)]

    def total_objects(self) -> int:
        with self.lock:
            return sum(len(c.objects) for c in self.collections.values())
