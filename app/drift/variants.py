"""Known variants of an encoder: where their vectors sit relative to this encoder's.

A model ships in several variants that share a tokenizer and a vector space but not their exact
numbers: here ``int8`` (the production encoder: ORT fusions + dynamic int8 weights) and ``fp32``.
Embedding a collection with the wrong one under the right fingerprint (a mislabelled artefact, a
deployment that loads ``model-fp32.onnx`` for ``model-int8.onnx``) changes no text's vector by
more than a few hundredths in cosine, but it moves the *mean* of the vectors by a systematic offset
that is much the same for any text: the quantisation error is not centred. The monitor is given
that offset for every other known variant, and watches the projection of each vector on the
Fisher direction ``C^-1 d`` of its own collection (``variant_<name>`` signals,
:func:`app.drift.signals.variant_tests`). Where the ``shift`` scan looks for a mean shift in any of
352 directions, this test knows the direction: a swap moves it by ~0.4-1.2 sd per event (DRIFT.md
section 2), against the scan's few hundredths.

The offsets come from ``variant-means.npz`` beside the model: the mean vector of a fixed text set
(:data:`TEXTS_FILE`, shipped with the model) under each variant, on the CPU, recorded by
``python -m load.drift_variants --record``. A monitor of fingerprint ``F`` gets
``mean(G) - mean(F)`` for every other recorded fingerprint ``G``; a fingerprint that is not in the
file (another model, a variant recorded nowhere) gets none, and its collections are watched
without ``variant_`` signals.

**The offsets are this host's.** ONNX Runtime's int8 kernels round and saturate differently on
CPUs with and without VNNI (:data:`app.drift.canary.INT8_FLAGS`): the int8 vectors, and so the
offset, depend on the CPU class (the canary texts' offsets of two classes have a cosine of 0.51).
The shipped file is used only where it was recorded for this host: the same int8 instruction sets,
the same execution provider as the encoder, the same ONNX Runtime version and text set
(:func:`means_match`). Elsewhere :func:`host_variant_offsets` records the means on the host, once,
with the encoder's own provider (every variant of the model embeds the text set: 11 s on two CPU
cores, int8 1.6 s and fp32 9.5 s), and keeps them in a cache directory shared by every worker and
state directory of the host (:func:`host_cache_dir`), so a test suite or a fleet of workers
records once per machine.

The encoder canary (:mod:`app.drift.canary`) is the detector of *any* encoder change; this signal
is the statistical detector's sharpest view of the changes we can name in advance.

The package imports neither Kafka nor Faust.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import canary
from .canary import int8_isa
from .reference import load_with_meta, savez_with_meta

__all__ = ["MEANS_FILE", "TEXTS_FILE", "load_texts", "read_means", "write_means", "variant_offsets", "variant_name",
           "offsets_from_means", "means_meta", "means_match", "record_means", "host_cache_dir", "host_means",
           "host_variant_offsets"]

log = logging.getLogger(__name__)

#: the mean vector of the text set under each recorded variant (fingerprints, means, meta)
MEANS_FILE = "variant-means.npz"
#: the text set: one text per line, ``#`` lines and blank lines skipped
TEXTS_FILE = "variant-texts.txt"


def load_texts(model_dir: Path | str) -> list[str]:
    """The variant text set of a model directory (the canary file's format)."""
    return canary.load_texts(model_dir, TEXTS_FILE)


def variant_name(fingerprint: str) -> str:
    """The variant field of a fingerprint (``<model>:<variant>:<hash>:...``), else a hash of it.

    >>> variant_name("all-MiniLM-L6-v2:fp32:5cadbf3a0575:len256:mean-l2:d384")
    'fp32'
    >>> len(variant_name("something-else"))
    12
    """
    parts = fingerprint.split(":")
    if len(parts) >= 3 and parts[1].isalnum():
        return parts[1]
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


def write_means(path: Path, fingerprints: list[str], means: np.ndarray, meta: dict) -> None:
    """Write the recorded means (k, d) of ``fingerprints`` and a JSON document (atomic; readable
    by all, like the model artefacts it is shipped with)."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or len(means) != len(fingerprints):
        raise ValueError(f"{len(fingerprints)} fingerprints for means of shape {means.shape}")
    savez_with_meta(path, {"fingerprints": np.array(fingerprints), "means": means}, meta, mode=0o644)


def read_means(path: Path) -> tuple[list[str], np.ndarray, dict] | None:
    """``(fingerprints, means, meta)`` from ``path``; None when there is no file."""
    got = load_with_meta(path)
    if got is None:
        return None
    arrays, meta = got
    return [str(x) for x in arrays["fingerprints"].tolist()], np.asarray(arrays["means"], dtype=np.float64), meta


def variant_offsets(model_dir: Path | str | None, fingerprint: str) -> dict[str, np.ndarray]:
    """``{variant name: mean(other) - mean(this)}`` for every other variant recorded in the means
    file beside the model, whatever host recorded it (a recording of another CPU class is logged);
    empty when the file or this fingerprint is missing (logged). A worker uses
    :func:`host_variant_offsets` instead."""
    if model_dir is None:
        return {}
    got = read_means(Path(model_dir) / MEANS_FILE)
    if got is None:
        log.info("no %s in %s: drift monitors get no variant_ signals", MEANS_FILE, model_dir)
        return {}
    fps, means, meta = got
    isa = meta.get("int8_isa")
    if isa is not None and isa != int8_isa():
        # the offsets still give valid signals (their null comes from the collection's warm-up),
        # only a weaker test: int8 vectors differ between CPUs with other int8 instructions
        log.warning("%s was recorded on a CPU with other int8 instructions (%s, here %s): the variant_ "
                    "signals test a direction that may not be this host's; a worker records its own "
                    "(host_variant_offsets)", MEANS_FILE, isa, int8_isa())
    return _offsets_of(fps, means, fingerprint, Path(model_dir) / MEANS_FILE)


def _offsets_of(fps: list[str], means: np.ndarray, fingerprint: str, where: Path) -> dict[str, np.ndarray]:
    """The offsets of ``fingerprint`` among recorded means (read from ``where``); empty, logged,
    when it is not among them."""
    if fingerprint not in fps:
        log.info("fingerprint %s is not recorded in %s: drift monitors get no variant_ signals", fingerprint, where)
        return {}
    return offsets_from_means(fps, means)[fingerprint]


def offsets_from_means(fps: list[str], means: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """``{fingerprint: {variant name: mean(other) - mean(this)}}`` from recorded means.

    >>> off = offsets_from_means(["m:a:1", "m:b:2"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> off["m:a:1"]["b"].tolist(), off["m:b:2"]["a"].tolist()
    ([-1.0, 1.0], [1.0, -1.0])
    """
    return {fp: {variant_name(other): means[j] - means[i] for j, other in enumerate(fps) if j != i}
            for i, fp in enumerate(fps)}


def means_meta(texts: list[str], provider: str) -> dict:
    """What a recording of the means depends on (and a little about where it was made)."""
    import onnxruntime
    import tokenizers

    return {"texts": len(texts), "texts_sha256": canary.texts_digest(texts), "provider": provider,
            "int8_isa": int8_isa(), "recorded_at": int(time.time()),
            "versions": {"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
                         "numpy": np.__version__, "python": platform.python_version()}}


def means_match(meta: dict, want: dict) -> str | None:
    """Why a recording with ``meta`` is not this host's (``want``: :func:`means_meta` here), or None.

    >>> want = {"texts_sha256": "t", "provider": "CPU", "int8_isa": "avx2", "versions": {"onnxruntime": "1.2"}}
    >>> means_match(dict(want), want) is None
    True
    >>> means_match({**want, "int8_isa": "avx2 avx512_vnni"}, want)
    "int8_isa 'avx2 avx512_vnni', here 'avx2'"
    """
    for key in ("texts_sha256", "provider", "int8_isa"):
        if meta.get(key) != want.get(key):
            return f"{key} {meta.get(key)!r}, here {want.get(key)!r}"
    got, here = (m.get("versions", {}).get("onnxruntime") for m in (meta, want))
    if got != here:
        return f"onnxruntime {got!r}, here {here!r}"
    return None


def record_means(encoders: list, texts: list[str], *, batch: int = 64,
                 progress: Callable[[str], None] | None = None) -> tuple[list[str], np.ndarray]:
    """The mean vector of ``texts`` under each encoder: ``(fingerprints, means (k, d) float64)``."""
    fps, means = [], []
    for enc in encoders:
        t0 = time.perf_counter()
        v = np.vstack([enc.encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]).astype(np.float64)
        if not np.isfinite(v).all():
            raise ValueError(f"{enc.fingerprint} gave a non-finite vector for the variant text set")
        fps.append(enc.fingerprint)
        means.append(v.mean(axis=0))
        if progress is not None:
            progress(f"{variant_name(enc.fingerprint)}: {len(texts)} texts in {time.perf_counter() - t0:.1f}s "
                     f"({enc.fingerprint}, {enc.provider})")
    return fps, np.vstack(means)


def host_cache_dir() -> Path:
    """Where a host keeps the means it recorded itself: ``variant-means`` in the project's cache
    directory (``$EMBEDSTREAM_CACHE_DIR``, by default ``~/.cache/embedstream``, where the test
    servers are kept too)."""
    return Path(os.environ.get("EMBEDSTREAM_CACHE_DIR") or Path.home() / ".cache" / "embedstream") / "variant-means"


def _cache_name(model_dir: Path, want: dict) -> str:
    """One file per model directory's artefacts and per recording condition."""
    try:
        manifest = (Path(model_dir) / "manifest.json").read_bytes()
    except OSError:
        manifest = str(Path(model_dir).resolve()).encode()
    key = json.dumps({k: want.get(k) for k in ("texts_sha256", "provider", "int8_isa")}, sort_keys=True)
    key += want.get("versions", {}).get("onnxruntime", "")
    return f"{hashlib.sha256(manifest + key.encode()).hexdigest()[:24]}.npz"


def host_variant_offsets(encoder, load_variant: Callable[[str], object], *, fingerprint: str | None = None,
                         cache_dir: Path | str | None = None, record: bool = True) -> dict[str, np.ndarray]:
    """``{variant name: mean(other) - mean(this)}`` for ``encoder`` (or for ``fingerprint``, another
    of its model's recorded fingerprints), measured for this host (:func:`host_means`); empty
    (logged) when there are no means or the fingerprint is not among them. A monitor then has no
    ``variant_`` signals (the other detectors, and the canary, still watch its collection)."""
    got = host_means(encoder, load_variant, cache_dir=cache_dir, record=record)
    if got is None:
        return {}
    fps, means, where = got
    return _offsets_of(fps, means, fingerprint or encoder.fingerprint, where)


def host_means(encoder, load_variant: Callable[[str], object], *, cache_dir: Path | str | None = None,
               record: bool = True) -> tuple[list[str], np.ndarray, Path] | None:
    """``(fingerprints, means, file)`` of ``encoder``'s model for this host.

    The means shipped beside the model are used when they were recorded for this host
    (:func:`means_match`); else the ones this host recorded before (``cache_dir``, default
    :func:`host_cache_dir`); else, with ``record``, the text set is embedded now by ``encoder``
    and by ``load_variant(name)`` for every other variant in the model's manifest (the same
    provider), and the means are cached. None (logged) when the model has no text set or the
    recording fails.
    """
    model_dir = getattr(encoder, "model_dir", None)
    if model_dir is None:
        return None
    model_dir = Path(model_dir)
    try:
        texts = load_texts(model_dir)
    except OSError:
        log.info("no %s in %s: drift monitors get no variant_ signals", TEXTS_FILE, model_dir)
        return None
    want = means_meta(texts, getattr(encoder, "provider", "CPUExecutionProvider"))
    shipped = read_means(model_dir / MEANS_FILE)
    why = "there is no " + MEANS_FILE
    if shipped is not None:
        why = means_match(shipped[2], want)
        if why is None:
            return shipped[0], shipped[1], model_dir / MEANS_FILE
    cache = Path(cache_dir) if cache_dir is not None else host_cache_dir()
    path = cache / _cache_name(model_dir, want)
    got = read_means(path)
    if got is not None and means_match(got[2], want) is None:
        return got[0], got[1], path
    if not record:
        return None
    names = list(getattr(encoder, "manifest", {}).get("variants", {}))
    others = [n for n in names if n != getattr(encoder, "variant", None)]
    if not others:
        return None
    log.warning("the shipped variant means are not this host's (%s): recording them here, once "
                "(%d texts x %d variants, %s; cached in %s)", why, len(texts), 1 + len(others), want["provider"], cache)
    try:
        encoders = [encoder, *(load_variant(n) for n in others)]
        fps, means = record_means(encoders, texts, progress=log.info)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot be loaded costs the signal, not the worker
        log.warning("could not record the variant means on this host (%s: %s): drift monitors get no "
                    "variant_ signals", type(exc).__name__, exc)
        return None
    meta = {**want, "source": "app.drift.variants.host_means", "model_dir": str(model_dir)}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_means(path, fps, means, meta)
    except OSError as exc:
        log.warning("could not cache the variant means in %s (%s): they are recorded again at the next start",
                    cache, exc)
    return fps, means, path
