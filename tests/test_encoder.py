"""The real ONNX encoder against sentence-transformers reference vectors and STS-B."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.encoder import MODEL_DIR, Encoder, EncoderError

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "reference_vectors.npz"
STSB = REPO.parent / "shared" / "data" / "stsb-en-test.csv"
MTEB_STSB_SPEARMAN = 0.8203247  # MTEB STSBenchmark test, all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def reference():
    ref = np.load(FIXTURE)
    return [str(t) for t in ref["texts"]], ref["vectors"]


def test_fp32_matches_sentence_transformers(encoder_fp32, reference):
    texts, ref = reference
    cos = (encoder_fp32.encode(texts) * ref).sum(axis=1)
    assert cos.min() >= 0.9999, cos


def test_int8_close_to_sentence_transformers(encoder, reference):
    texts, ref = reference
    cos = (encoder.encode(texts) * ref).sum(axis=1)
    assert cos.min() >= 0.96, cos
    assert cos.mean() >= 0.98


def test_vectors_are_unit_length_and_finite(encoder):
    v, norms = encoder.encode_with_norms(["a", "longer text " * 50, ""])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert (norms > 0).all()


def test_batching_and_order_do_not_change_vectors(encoder, reference):
    texts, _ = reference
    together = encoder.encode(texts)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    reversed_ = encoder.encode(texts[::-1])[::-1]
    assert np.allclose(together, one_by_one, atol=2e-4)
    assert np.allclose(together, reversed_, atol=2e-4)


def test_truncates_at_256_tokens(encoder):
    long_ids = list(range(2000, 2600))
    a, _ = encoder.encode_tokens([long_ids])
    b, _ = encoder.encode_tokens([long_ids[:254]])
    assert np.allclose(a, b, atol=1e-6)


def test_fingerprint_names_the_vector_space(encoder, encoder_fp32):
    assert encoder.fingerprint != encoder_fp32.fingerprint
    assert encoder.fingerprint.startswith("all-MiniLM-L6-v2:int8:")
    info = encoder.fingerprint_info.as_dict()
    assert info["max_length"] == 256 and info["pooling"] == "mean-l2" and info["dim"] == 384
    assert encoder.provider == "CPUExecutionProvider"


def test_corrupt_artefact_is_refused(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(MODEL_DIR, d)
    with open(d / "model-int8.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(EncoderError, match="sha256 mismatch"):
        Encoder.load(variant="int8", model_dir=d)


def test_unknown_variant_and_missing_cuda():
    with pytest.raises(EncoderError, match="unknown model variant"):
        Encoder.load(variant="fp8")
    with pytest.raises(EncoderError, match="cuda"):
        Encoder.load(device="cuda")


def _spearman(a, b):
    def rank(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        xs = x[order]
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and xs[j + 1] == xs[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2  # average rank of ties
            i = j + 1
        return r
    return float(np.corrcoef(rank(np.asarray(a)), rank(np.asarray(b)))[0, 1])


@pytest.fixture(scope="module")
def stsb():
    if not STSB.exists():
        pytest.skip(f"STS-B test split not found at {STSB} (shared/data is provided beside the checkout)")
    rows = list(csv.reader(STSB.open(encoding="utf-8")))
    return [r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows])


@pytest.mark.parametrize("variant,tolerance", [("fp32", 0.0005), ("int8", 0.005)])
def test_reproduces_mteb_stsb_spearman(stsb, variant, tolerance, encoder, encoder_fp32):
    enc = encoder_fp32 if variant == "fp32" else encoder
    s1, s2, gold = stsb
    a, b = enc.encode(s1), enc.encode(s2)
    rho = _spearman((a * b).sum(axis=1), gold)
    print(f"{variant}: STS-B cosine Spearman {rho:.6f} (MTEB {MTEB_STSB_SPEARMAN})")
    assert abs(rho - MTEB_STSB_SPEARMAN) <= tolerance
