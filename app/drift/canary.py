"""Encoder canary: a fixed set of texts whose vectors must not change while the fingerprint does not.

The statistical detectors see an encoder change only through its effect on the stream, after tens of
events. The canary sees it directly: a small fixed set of texts (``canary.txt``, shipped with the
model artefacts) is embedded when the worker starts, every ``every`` batches and after a model
reload, and the vectors are compared with *reference vectors* recorded for the same model
fingerprint **and execution provider** (``canary-<fingerprint>--<provider>.npz`` beside the model;
recorded by ``python -m load.drift_canary --record``). A worst cosine below ``1 - tolerance`` means
the encoder no longer computes what it computed when the reference was recorded - an onnxruntime or
tokenizers upgrade, another CPU kernel, a GPU, a changed pooling - although the fingerprint (model
name, variant, artefact hash, pooling) is the same: an ``ENCODER_CHANGED`` alert, with the worst
cosine, goes out at once.

**Tolerance.** The encoder's own numeric noise, measured when the reference is recorded (repeated
runs in one process, another process, other thread counts and batch compositions; the reference
file keeps the measurement): int8 on this CPU is bit-exact (noise 0), so any difference is a change;
fp32 batches rows with padding and differs in the last bits between batch compositions. Two
tolerances, each ``max(floor, NOISE_FACTOR x measured noise)``: on ``1 - cosine`` (floor
``TOLERANCE_FLOOR``) and on the largest absolute difference of a coordinate (floor
``ABS_TOLERANCE_FLOOR``, which catches a small change of a deterministic encoder that hardly moves
the cosine); either one exceeded is a change. Both are far below what a real change does (int8 vs
fp32 under one fingerprint: worst cosine 0.964 on these texts).

**CPU class.** The int8 model's vectors depend on the CPU's int8 instructions (ONNX Runtime's u8s8
kernels with and without VNNI differ: worst cosine ~0.965 on these texts). A reference records the
int8 flags of the CPU it was recorded on (``int8_isa``); a shipped reference recorded on another
class is not used, and the host keeps a local one, as below.

**No reference for this fingerprint/provider** (e.g. CUDA, where nothing could be recorded here):
the first check's vectors become a *local* reference in the drift state directory, so that later
checks (every ``every`` batches, after a reload, after a restart) still catch a change; the status
says so. Nothing is alerted for the missing reference itself.

The package imports neither Kafka nor Faust; the encoder is any object with ``encode(texts)``,
``fingerprint`` and ``provider`` (``app.encoder.Encoder``).
"""
from __future__ import annotations

import hashlib
import logging
import platform
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .alert import AlertKind, CanaryCheck, DriftAlert, Severity
from .reference import load_with_meta, savez_with_meta

log = logging.getLogger(__name__)

__all__ = ["INT8_FLAGS", "int8_isa", "CANARY_FILE", "CanaryResult", "EncoderCanary", "load_texts", "reference_path", "read_reference",
           "write_reference", "compare", "texts_digest", "encoder_changed_alert", "TOLERANCE_FLOOR",
           "ABS_TOLERANCE_FLOOR", "NOISE_FACTOR"]

CANARY_FILE = "canary.txt"
#: smallest tolerance on 1 - cosine (float32 vectors: cosine is exact to ~1e-7)
TOLERANCE_FLOOR = 1e-6
#: smallest tolerance on the largest absolute coordinate difference (unit vectors, 384 coordinates)
ABS_TOLERANCE_FLOOR = 1e-6
#: tolerance = NOISE_FACTOR x the measured noise (when that is above the floor)
NOISE_FACTOR = 10.0


#: the CPU flags that decide which int8 kernels ONNX Runtime runs (u8s8 products with and without
#: VNNI round and saturate differently: the int8 vectors of two such CPUs differ, worst cosine ~0.965
#: on the canary texts)
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_isa(cpuinfo: str | None = None) -> str:
    """The int8-relevant instruction sets of this CPU, e.g. ``"avx2 avx512_vnni avx512bw"``.

    >>> int8_isa("flags : fpu avx2 avx512bw avx512_vnni sse4_2")
    'avx2 avx512_vnni avx512bw'
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.machine()
    flags = set(cpuinfo.split())
    return " ".join(sorted(f for f in INT8_FLAGS if f in flags)) or platform.machine()


def load_texts(model_dir: Path | str, name: str = CANARY_FILE) -> list[str]:
    """The canary texts of a model directory (or another text file of it, ``name``): one per line;
    ``#`` lines and blank lines skipped."""
    path = Path(model_dir) / name
    lines = path.read_text(encoding="utf-8").splitlines()
    return [x for x in lines if x.strip() and not x.startswith("#")]


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def reference_path(model_dir: Path | str, fingerprint: str, provider: str) -> Path:
    """Where the reference vectors of (fingerprint, provider) live in ``model_dir``."""
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in fingerprint)
    return Path(model_dir) / f"canary-{safe}--{provider}.npz"


def write_reference(path: Path, vectors: np.ndarray, meta: dict) -> None:
    """Write reference vectors + a JSON document (atomic)."""
    # shipped with the model artefacts: readable like them
    savez_with_meta(path, {"vectors": np.asarray(vectors, dtype=np.float32)}, meta, mode=0o644)


def read_reference(path: Path) -> tuple[np.ndarray, dict] | None:
    got = load_with_meta(path)
    return None if got is None else (got[0]["vectors"].astype(np.float32), got[1])


@dataclass(frozen=True)
class CanaryResult:
    """One canary check: how far the vectors are from the reference."""

    worst_cosine: float
    mean_cosine: float
    worst_text: int  # index into the canary texts
    max_abs_diff: float
    tolerance: float
    abs_tolerance: float
    changed: bool
    reference: str  # "shipped" | "local" | "recorded-now"
    provider: str
    texts: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(current: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-text cosine of ``current`` to ``reference`` rows (NaN -> -1), and the largest |difference|.

    >>> a = np.eye(3, dtype=np.float32)
    >>> cos, diff = compare(a, a)
    >>> cos.tolist(), diff
    ([1.0, 1.0, 1.0], 0.0)
    """
    c = np.asarray(current, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.shape != r.shape:
        return np.full(len(r), -1.0), float("inf")
    num = np.einsum("ij,ij->i", c, r)
    den = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    cos = np.where(np.isfinite(cos), np.minimum(cos, 1.0), -1.0)
    diff = np.abs(c - r)
    return cos, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf")


class EncoderCanary:
    """Checks an encoder against its canary reference.

    Parameters
    ----------
    encoder
        ``encode(texts) -> (n, d)``, ``fingerprint``, ``provider`` (and optionally ``model_dir``).
    model_dir
        Where ``canary.txt`` and the shipped references are (default: ``encoder.model_dir``).
    state_dir
        Where a *local* reference is kept when none is shipped for this fingerprint/provider
        (None: no local reference; the first check's vectors are kept in memory only).
    tolerance, abs_tolerance
        Override the tolerances on ``1 - cosine`` and on the largest coordinate difference
        (default: from the reference's measured noise).
    """

    def __init__(self, encoder, *, model_dir: Path | str | None = None, state_dir: Path | str | None = None,
                 tolerance: float | None = None, abs_tolerance: float | None = None):
        self.encoder = encoder
        self.model_dir = Path(model_dir if model_dir is not None else encoder.model_dir)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.texts = load_texts(self.model_dir)
        self.digest = texts_digest(self.texts)
        self.fingerprint = str(encoder.fingerprint)
        self.provider = str(getattr(encoder, "provider", "unknown"))
        self.tolerance_override = tolerance
        self.abs_tolerance_override = abs_tolerance
        self.reference, self.reference_kind, self.reference_meta = self._find_reference()
        self.checks = 0
        self.last: CanaryResult | None = None
        self.last_vectors: np.ndarray | None = None

    # ------------------------------------------------------------------ references
    def _find_reference(self):
        shipped = read_reference(reference_path(self.model_dir, self.fingerprint, self.provider))
        if shipped is not None and shipped[1].get("texts_sha256") == self.digest:
            isa = shipped[1].get("int8_isa")
            if isa is None or isa == int8_isa():
                return shipped[0], "shipped", shipped[1]
            # recorded on a CPU with other int8 instructions: its int8 kernels compute other vectors
            # (DRIFT.md section 5), so the shipped reference is not this host's; a local one is kept
            log.info("encoder canary: the shipped reference of %s was recorded on a CPU with other int8 "
                     "instructions (%s, here %s); a local reference is used", self.fingerprint, isa, int8_isa())
        if self.state_dir is not None:
            local = read_reference(reference_path(self.state_dir, self.fingerprint, self.provider))
            if local is not None and local[1].get("texts_sha256") == self.digest:
                return local[0], "local", local[1]
        return None, "none", {}

    def _tolerance(self, override: float | None, noise_key: str, floor: float) -> float:
        """``override``, else NOISE_FACTOR x the reference's measured noise ``noise_key``, at least ``floor``."""
        if override is not None:
            return float(override)
        noise = float(self.reference_meta.get("noise", {}).get(noise_key, 0.0))
        return max(floor, NOISE_FACTOR * noise)

    @property
    def tolerance(self) -> float:
        return self._tolerance(self.tolerance_override, "max_cosine_distance", TOLERANCE_FLOOR)

    @property
    def abs_tolerance(self) -> float:
        return self._tolerance(self.abs_tolerance_override, "max_abs_diff", ABS_TOLERANCE_FLOOR)

    def embed(self) -> np.ndarray:
        return np.asarray(self.encoder.encode(self.texts), dtype=np.float32)

    # ------------------------------------------------------------------ the check
    def check(self) -> CanaryResult:
        """Embed the canary texts and compare them with the reference (recording a local one if none)."""
        t0 = time.perf_counter()
        cur = self.embed()
        seconds = time.perf_counter() - t0
        self.checks += 1
        if self.reference is None:
            meta = {"fingerprint": self.fingerprint, "provider": self.provider, "texts_sha256": self.digest,
                    "recorded_at": int(time.time()), "source": "first check (no shipped reference)",
                    "noise": {"max_cosine_distance": 0.0, "max_abs_diff": 0.0, "note": "not measured"}}
            if self.state_dir is not None:
                write_reference(reference_path(self.state_dir, self.fingerprint, self.provider), cur, meta)
            self.reference, self.reference_kind, self.reference_meta = cur, "recorded-now", meta
        cos, diff = compare(cur, self.reference)
        j = int(np.argmin(cos))
        tol, atol = self.tolerance, self.abs_tolerance
        res = CanaryResult(worst_cosine=float(cos[j]), mean_cosine=float(cos.mean()), worst_text=j,
                           max_abs_diff=diff, tolerance=tol, abs_tolerance=atol,
                           changed=bool(1.0 - cos[j] > tol or diff > atol),
                           reference=self.reference_kind, provider=self.provider, texts=len(self.texts),
                           seconds=seconds)
        self.last, self.last_vectors = res, cur
        return res


_NS = uuid.UUID("5d7c0e2a-3f1b-5a43-9c1e-8f2b6a9d4e70")


def encoder_changed_alert(result: CanaryResult, *, fingerprint: str, collection: str, texts: list[str],
                          current: np.ndarray, events_observed: int, reason: str, event_time: int | None = None,
                          fired_at_ms: int | None = None) -> DriftAlert:
    """The ENCODER_CHANGED alert for a canary check that found a change.

    Its id is a hash of the key, the provider and the vectors found, so the same change reported
    again (after a restart) keeps its id.
    """
    sig = hashlib.sha256(np.ascontiguousarray(current, dtype=np.float32).tobytes()).hexdigest()[:16]
    base = f"{fingerprint}\0{collection}\0{result.provider}\0{sig}"
    worst = texts[result.worst_text] if texts else ""
    check = CanaryCheck(worst_cosine=result.worst_cosine, mean_cosine=result.mean_cosine, worst_text=worst[:80],
                        max_abs_diff=result.max_abs_diff, tolerance=result.tolerance,
                        abs_tolerance=result.abs_tolerance, provider=result.provider, reference=result.reference,
                        texts=result.texts, reason=reason)
    msg = (f"Encoder changed under fingerprint {fingerprint} on {result.provider}: the canary's worst cosine to "
           f"the {result.reference} reference is {result.worst_cosine:.6f} (mean {result.mean_cosine:.6f}, "
           f"largest coordinate difference {result.max_abs_diff:.2e}; tolerance {result.tolerance:.0e} / "
           f"{result.abs_tolerance:.0e}), worst on \"{worst[:60]}\"; found at {reason}. Vectors written since "
           f"the change are not comparable with older ones of this collection.")
    idx = max(int(events_observed) - 1, 0)
    return DriftAlert(
        alert_id=str(uuid.uuid5(_NS, base + "\0alert")), kind=AlertKind.ENCODER_CHANGED, severity=Severity.CRITICAL,
        model_fingerprint=fingerprint, collection=collection, episode_id=str(uuid.uuid5(_NS, base)), sequence=0,
        detector="EncoderCanary", signals=["canary"], triggers=[],
        fired_at=int(round(time.time() * 1000)) if fired_at_ms is None else int(fired_at_ms),
        event_time=event_time, event_index=idx, episode_start_index=idx, window_start_index=idx,
        events_observed=int(events_observed), message=msg, canary=check,
    )
