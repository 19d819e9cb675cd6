"""The encoder canary: record its reference vectors, measure the encoder's numeric noise, evaluate it.

    python -m load.drift_canary --record            # write canary-<fingerprint>--<provider>.npz (int8, fp32)
    python -m load.drift_canary --noise             # only measure and print the noise
    python -m load.drift_canary --evaluate          # detection and cost of the canary in a DriftStage

**Noise** (``--record`` / ``--noise``): the canary texts are embedded by a reference run, then again
under every variation the worker may go through with the *same* fingerprint and provider: repeated
calls in one process, 1 and 2 ONNX Runtime threads, the CPU arena on and off, one text per call vs
all texts in one call (fp32 pads rows of a batch to the longest), the texts in reverse order, and a
fresh process. The largest ``1 - cosine`` and the largest coordinate difference over all of them is
the encoder's noise, stored in the reference file; the canary's tolerances are 10x that, with
floors (:mod:`app.drift.canary`).

**Evaluation** (``--evaluate``): a :class:`~app.alerts.DriftStage` fed batches of 64 cached vectors
with the real int8 encoder attached; at a random batch the encoder silently starts computing with
fp32 under the int8 fingerprint and the same ONNX session object (no reload noticed). Reported: the
batches from the swap to the ENCODER_CHANGED alert (the canary runs every ``--every`` batches), false
ENCODER_CHANGED alerts before the swap, and the cost of one check.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.drift.canary import compare, load_texts, reference_path, texts_digest, write_reference
from app.drift.canary import int8_isa
from load.procs import cpu_model

VARIANTS = ("int8", "fp32")


def _encoder(variant: str, **kw):
    from app.encoder import Encoder

    return Encoder.load(variant=variant, device="cpu", **kw)


def _child(variant: str) -> None:
    """Embed the canary texts in this (fresh) process and print the vectors as JSON."""
    enc = _encoder(variant)
    v = enc.encode(load_texts(enc.model_dir))
    print(json.dumps(v.astype(float).tolist()))


def measure(variant: str, repeats: int = 5, log=print) -> tuple[np.ndarray, dict, object]:
    """Reference vectors and the noise over the variations (module docstring)."""
    enc = _encoder(variant)
    texts = load_texts(enc.model_dir)
    ref = enc.encode(texts)
    runs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        runs[f"repeat {r + 1}"] = enc.encode(texts)
    runs["one text per call"] = np.vstack([enc.encode([t]) for t in texts])
    runs["reverse order"] = enc.encode(texts[::-1])[::-1]
    for threads in (1, 2):
        for arena in (False, True):
            e = _encoder(variant, threads=threads, cpu_arena=arena)
            runs[f"threads={threads} arena={arena}"] = e.encode(texts)
    e = _encoder(variant, max_batch_tokens=256)
    runs["max_batch_tokens=256"] = e.encode(texts)
    out = subprocess.run([sys.executable, "-m", "load.drift_canary", "--child", variant], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    runs["fresh process"] = np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
    per = {}
    worst_cos, worst_abs = 0.0, 0.0
    for name, v in runs.items():
        cos, diff = compare(v, ref)
        d = float(1.0 - cos.min())
        per[name] = {"max_cosine_distance": d, "max_abs_diff": diff, "bit_exact": bool(np.array_equal(v, ref))}
        worst_cos, worst_abs = max(worst_cos, d), max(worst_abs, diff)
        log(f"  {variant} {name:28s} 1-cos {d:.2e}  max|diff| {diff:.2e}  bit-exact {per[name]['bit_exact']}")
    noise = {"max_cosine_distance": worst_cos, "max_abs_diff": worst_abs, "variations": per}
    return ref, noise, enc


def record(variants=VARIANTS, log=print) -> list[Path]:
    import onnxruntime
    import tokenizers

    paths = []
    for variant in variants:
        ref, noise, enc = measure(variant, log=log)
        texts = load_texts(enc.model_dir)
        meta = {"fingerprint": enc.fingerprint, "provider": enc.provider, "texts_sha256": texts_digest(texts),
                "texts": len(texts), "recorded_at": int(time.time()), "noise": noise,
                "source": "python -m load.drift_canary --record",
                "versions": {"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
                             "numpy": np.__version__, "python": platform.python_version()},
                "cpu": cpu_model(), "int8_isa": int8_isa()}
        path = reference_path(enc.model_dir, enc.fingerprint, enc.provider)
        write_reference(path, ref, meta)
        log(f"wrote {path} ({len(texts)} texts; noise 1-cos {noise['max_cosine_distance']:.2e}, "
            f"max|diff| {noise['max_abs_diff']:.2e})")
        paths.append(path)
    return paths


class _Swapped:
    """An int8 encoder that silently starts computing with fp32 (same fingerprint, same session)."""

    def __init__(self, int8, fp32):
        self.int8, self.fp32, self.swapped = int8, fp32, False
        self.fingerprint, self.provider, self.model_dir = int8.fingerprint, int8.provider, int8.model_dir
        self.session = int8.session

    def encode(self, texts):
        return (self.fp32 if self.swapped else self.int8).encode(texts)


class _Batch:
    def __init__(self, vectors, norms, start):
        from types import SimpleNamespace

        n = len(vectors)
        self.vectors, self.norms = vectors, norms
        self.vector_doc_ids = [f"d{start + i}" for i in range(n)]
        self.vector_records = [SimpleNamespace(partition=0, offset=start + i, timestamp_ms=1_767_225_600_000 + 20 * (start + i))
                               for i in range(n)]


def evaluate(runs: int = 10, every: int = 64, batch: int = 64, seed: int = 0, log=print) -> dict:
    from app.alerts import DriftStage
    from app.drift import DriftConfig
    from app.drift.alert import AlertKind
    from load import drift_data

    pools = drift_data.real_pools(part="tune", corpora=("reuters-r8",), variants=("int8",))
    v, nrm = pools["reuters"].variants["int8"]
    int8, fp32 = _encoder("int8"), _encoder("fp32")
    rng = np.random.default_rng(seed)
    delays, false_alerts, check_ms = [], 0, []
    t0 = time.perf_counter()
    for r in range(runs):
        enc = _Swapped(int8, fp32)
        swap_at = int(rng.integers(100, 400))  # batch index of the first batch after the swap
        with tempfile.TemporaryDirectory() as tmp:
            stage = DriftStage(enc.fingerprint, "canary-eval", Path(tmp), DriftConfig(warmup=1000), encoder=enc,
                               canary_every=every)
            found = None
            for b in range(swap_at + 2 * every):
                if b == swap_at:
                    enc.swapped = True
                idx = rng.integers(len(v), size=batch)
                alerts = stage.observe(_Batch(v[idx], nrm[idx], b * batch))
                for a in alerts:
                    if a.kind is AlertKind.ENCODER_CHANGED:
                        if b < swap_at:
                            false_alerts += 1
                        elif found is None:
                            found = b
                            log(f"  run {r + 1}: swap before batch {swap_at}, ENCODER_CHANGED with batch {b} "
                                f"({b - swap_at} batches later): worst cosine {a.canary.worst_cosine:.5f}, "
                                f"max|diff| {a.canary.max_abs_diff:.3f}")
                if found is not None:
                    break
            delays.append(None if found is None else found - swap_at)
            check_ms.append(stage.canary.last.seconds * 1000)
            stage.close()
    got = [d for d in delays if d is not None]
    # the cost of one check, measured alone (no other work in the loop)
    from app.drift.canary import EncoderCanary

    can = EncoderCanary(int8)
    times = []
    for _ in range(20):
        c0 = time.perf_counter()
        can.check()
        times.append((time.perf_counter() - c0) * 1000)
    res = {"runs": runs, "every": every, "batch": batch, "detected": len(got), "missed": len(delays) - len(got),
           "delay_batches_max": max(got) if got else None, "delay_batches_median": float(np.median(got)) if got else None,
           "false_alerts_before_swap": false_alerts, "check_ms_median": float(np.median(times)),
           "check_ms_p90": float(np.percentile(times, 90)), "texts": len(can.texts),
           "seconds": time.perf_counter() - t0}
    log(f"canary: {res['detected']}/{runs} swaps found within {res['delay_batches_max']} batches "
        f"(every {every}); {false_alerts} false ENCODER_CHANGED; one check {res['check_ms_median']:.0f} ms median "
        f"(p90 {res['check_ms_p90']:.0f}) for {res['texts']} texts")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="measure the noise and write the reference files")
    ap.add_argument("--noise", action="store_true", help="only measure and print the noise")
    ap.add_argument("--evaluate", action="store_true", help="detection and cost in a DriftStage")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--every", type=int, default=64)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    t0 = time.perf_counter()
    out: dict = {}
    if args.record:
        out["written"] = [str(p) for p in record()]
    elif args.noise:
        out["noise"] = {v: measure(v)[1] for v in VARIANTS}
    if args.evaluate:
        out["evaluate"] = evaluate(runs=args.runs, every=args.every)
    if not out:
        ap.error("give --record, --noise or --evaluate")
    out["seconds"] = time.perf_counter() - t0
    print(f"total {out['seconds']:.1f}s")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
