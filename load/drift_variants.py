"""The known-variant offsets of the encoder: build their text set, record them, measure their test.

    python -m load.drift_variants --make-texts      # write variant-texts.txt from the bundled sample corpus
    python -m load.drift_variants --record          # embed it with every variant: variant-means.npz
    python -m load.drift_variants --part tune       # the variant_ signal's effect of a swap, by pool

**Text set** (``--make-texts``): the canary texts, then every document of ``app/data/sample_corpus.jsonl``
(the demo's corpus, written for this project), every paragraph of them and every sentence of at least
four words: short, medium and long texts, in one fixed order. No text of any evaluation corpus is in
it, so the offsets are not fitted to the corpora they are evaluated on.

**Record** (``--record``): the mean vector of the text set under each variant (int8, fp32), on the
CPU, into ``variant-means.npz`` beside the model (:mod:`app.drift.variants`). A monitor of one
variant gets ``mean(other) - mean(its own)``.

**Measure** (``--part``): for each pool with an ``fp32`` variant, both directions of the swap
(``int8->fp32``: warm-up int8, then the same texts through fp32; and the reverse), three random
splits: the test direction is fitted as a monitor's warm-up fits it (1500 rows of the warm-up
variant, :func:`app.drift.signals.fit_basis`), and on the other rows the effect is the shift of the
``variant_`` signal's mean in units of its sd, ``z``. PageHinkley (delta 0.25, threshold 6.75,
block means of 4 rank scores) then needs about ``4 x 6.75 / (z - 0.25)`` events (printed as
``~delay``; the harness, ``load.drift_eval``, measures the real one). Also printed: the cosine
between the recorded offset and the pool's own mean offset (on its fit rows). Diagnosis only.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from app.drift import canary
from app.drift.signals import fit_basis
from app.drift.variants import MEANS_FILE, TEXTS_FILE, load_texts, means_meta, record_means, variant_name, write_means
from load.procs import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "app" / "data" / "sample_corpus.jsonl"
VARIANTS = ("int8", "fp32")


def _encoder(variant: str):
    from app.encoder import Encoder

    return Encoder.load(variant=variant, device="cpu")


def make_texts(corpus: Path = SAMPLE_CORPUS, model_dir: Path | None = None) -> list[str]:
    """The text set (module docstring): canary texts, documents, paragraphs, sentences; each once."""
    from app.encoder import MODEL_DIR

    model_dir = Path(model_dir or MODEL_DIR)
    docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    paras = [p.strip() for d in docs for p in d.split("\n\n") if len(p.split()) >= 5]
    sents = [s.strip() for p in paras for s in re.split(r"(?<=[.!?])\s+", p) if len(s.split()) >= 4]
    out, seen = [], set()
    for t in [*canary.load_texts(model_dir), *docs, *paras, *sents]:
        t = " ".join(t.split())  # one line each
        if t and not t.startswith("#") and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def write_texts(path: Path, texts: list[str]) -> None:
    head = ("# The text set of the known-variant offsets (app/drift/variants.py): written by\n"
            "# `python -m load.drift_variants --make-texts` from the canary texts and app/data/sample_corpus.jsonl.\n")
    path.write_text(head + "\n".join(texts) + "\n", encoding="utf-8")


def record(variants=VARIANTS, log=print) -> Path:
    encoders = [_encoder(v) for v in variants]
    model_dir = encoders[0].model_dir
    texts = load_texts(model_dir)
    fps, means = record_means(encoders, texts, progress=log)
    meta = {**means_meta(texts, "CPUExecutionProvider"), "cpu": cpu_model(),
            "source": "python -m load.drift_variants --record"}
    path = Path(model_dir) / MEANS_FILE
    write_means(path, fps, means, meta)
    for i in range(1, len(fps)):
        log(f"|mean({variant_name(fps[i])}) - mean({variant_name(fps[0])})| = {np.linalg.norm(means[i] - means[0]):.4f}")
    log(f"wrote {path}")
    return path


def swap_effect(warm: np.ndarray, other: np.ndarray, offset: np.ndarray, *, fit: int = 1500, splits: int = 3,
                seed: int = 0) -> dict:
    """Mean over ``splits`` of ``z``: the shift of the variant signal's mean (rows of ``other``
    against the same texts' rows of ``warm``) over its sd on ``warm``, with the test direction fitted
    on ``fit`` rows of ``warm``; and the cosine of ``offset`` with the rows' own mean offset."""
    zs, coss = [], []
    for rep in range(splits):
        perm = np.random.default_rng([seed, rep]).permutation(len(warm))
        a, b = perm[:fit], perm[fit:]
        if len(b) < 200:
            break
        basis = fit_basis(warm[a], windows=(), directions={"x": offset})
        w = basis.variants[:, 0].astype(np.float64)
        x0, x1 = warm[b].astype(np.float64) @ w, other[b].astype(np.float64) @ w
        zs.append(abs(x1.mean() - x0.mean()) / x0.std())
        own = (other[a].astype(np.float64) - warm[a]).mean(axis=0)
        coss.append(float(own @ offset / np.linalg.norm(own) / np.linalg.norm(offset)))
    return {"z": float(np.mean(zs)) if zs else float("nan"), "cos": float(np.mean(coss)) if coss else float("nan")}


def approx_delay(z: float, threshold: float = 6.75, delta: float = 0.25, block: int = 4) -> float:
    """PageHinkley's delay (events) for a mean shift of ``z`` sd: ``block x threshold / (z - delta)``.

    >>> approx_delay(1.0)
    36.0
    >>> approx_delay(0.2)
    inf
    """
    return block * threshold / (z - delta) if z > delta else float("inf")


def measure(part: str, cache: Path, log=print) -> list[dict]:
    from load import drift_data
    from load.drift_eval import known_variants

    offsets = known_variants()
    if not offsets:
        raise SystemExit(f"error: no {MEANS_FILE} beside the model: run `python -m load.drift_variants --record`")
    pools = drift_data.real_pools(cache, part=part, variants=("int8", "fp32"))
    rows = []
    log(f"part {part}: the variant_ signal's shift after a swap (z, sd per event; mean of 3 splits)")
    log(f"{'pool':10s} {'docs':>5s} {'int8->fp32':>10s} {'~delay':>6s} {'fp32->int8':>10s} {'~delay':>6s} {'cos':>5s}")
    for name, pool in pools.items():
        if "fp32" not in pool.variants:
            continue
        v8, v32 = pool.variants["int8"][0], pool.variants["fp32"][0]
        up = swap_effect(v8, v32, offsets["int8"]["fp32"])
        down = swap_effect(v32, v8, offsets["fp32"]["int8"])
        log(f"{name:10s} {len(pool):5d} {up['z']:10.2f} {approx_delay(up['z']):6.0f} {down['z']:10.2f} "
            f"{approx_delay(down['z']):6.0f} {up['cos']:5.2f}")
        rows.append({"pool": name, "docs": len(pool), "int8->fp32": up, "fp32->int8": down})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-texts", action="store_true", help=f"write {TEXTS_FILE} beside the model")
    ap.add_argument("--record", action="store_true", help=f"embed the text set with every variant: {MEANS_FILE}")
    ap.add_argument("--part", default=None, help="measure the swap's effect on this part's pools")
    ap.add_argument("--cache", type=Path, default=None, help="corpora + embedding cache (load.drift_data)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from app.encoder import MODEL_DIR

    if not (args.make_texts or args.record or args.part):
        ap.error("give --make-texts, --record or --part")
    out: dict = {}
    if args.make_texts:
        texts = make_texts()
        write_texts(MODEL_DIR / TEXTS_FILE, texts)
        print(f"wrote {MODEL_DIR / TEXTS_FILE}: {len(texts)} texts")
    if args.record:
        out["written"] = str(record())
    if args.part:
        from load import drift_data

        out["rows"] = measure(args.part, args.cache or drift_data.DEFAULT_CACHE)
        out["part"] = args.part
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
