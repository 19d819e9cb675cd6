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
without ``variant_`` signals. The encoder canary (:mod:`app.drift.canary`) is the detector of *any*
encoder change; this signal is the statistical detector's sharpest view of the changes we can
name in advance.

The package imports neither Kafka nor Faust.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from . import canary
from .canary import int8_isa
from .reference import load_with_meta, savez_with_meta

__all__ = ["MEANS_FILE", "TEXTS_FILE", "load_texts", "read_means", "write_means", "all_variant_offsets",
           "variant_offsets", "variant_name"]

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


def all_variant_offsets(model_dir: Path | str | None) -> dict[str, dict[str, np.ndarray]]:
    """``{fingerprint: {variant name: mean(other) - mean(this)}}`` for every fingerprint recorded
    beside the model (one read of the file); empty when there is none (logged)."""
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
                    "signals test a direction that may not be this host's; record it here with "
                    "`python -m load.drift_variants --record`", MEANS_FILE, isa, int8_isa())
    return {fp: {variant_name(other): means[j] - means[i] for j, other in enumerate(fps) if j != i}
            for i, fp in enumerate(fps)}


def variant_offsets(model_dir: Path | str | None, fingerprint: str) -> dict[str, np.ndarray]:
    """``{variant name: mean(other) - mean(this)}`` for every other variant recorded beside the
    model; empty when the file or this fingerprint is missing (logged)."""
    every = all_variant_offsets(model_dir)
    if every and fingerprint not in every:
        log.info("fingerprint %s is not recorded in %s: drift monitors get no variant_ signals",
                 fingerprint, Path(model_dir) / MEANS_FILE)
    return every.get(fingerprint, {})
