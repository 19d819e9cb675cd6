"""The encoder canary on the real ONNX model (int8, CPU) and its alerts through DriftStage."""
from types import SimpleNamespace

import numpy as np
import pytest

from app.drift import AlertKind, DriftConfig
from app.drift.canary import EncoderCanary, load_texts, read_reference, reference_path

# the canary texts' worst cosine between fp32 and the shipped int8 reference (deterministic: both
# encoders are bit-exact run to run on the recording CPU, measured by python -m load.drift_canary --noise)
WORST_FP32_VS_INT8 = 0.9641


@pytest.fixture(scope="module")
def int8():
    from app.encoder import Encoder

    return Encoder.load("int8", device="cpu")


@pytest.fixture(scope="module")
def fp32():
    from app.encoder import Encoder

    return Encoder.load("fp32", device="cpu")


@pytest.fixture(scope="module")
def host_dir(int8, tmp_path_factory):
    """A model directory whose int8 reference is what *this* host computes.

    The int8 encoder's numbers depend on the CPU's int8 instructions (ONNX Runtime picks other
    u8s8 kernels with and without AVX512-VNNI): on a host unlike the one that recorded the shipped
    reference, the real canary rightly reports a change at start-up (the vectors differ from those
    of a collection built there). The tests of the canary's logic - no change for an unchanged
    encoder, a change found within one period - must not depend on which CPU runs them, so they use
    a reference recorded here, the way ``load.drift_canary --record`` records one."""
    import shutil

    from app.drift.canary import int8_isa, write_reference

    d = tmp_path_factory.mktemp("host-model")
    shutil.copy(int8.model_dir / "canary.txt", d / "canary.txt")
    for p in int8.model_dir.glob("canary-*.npz"):
        shutil.copy(p, d / p.name)
    path = reference_path(int8.model_dir, int8.fingerprint, int8.provider)
    _, meta = read_reference(path)
    write_reference(d / path.name, int8.encode(load_texts(d)), {**meta, "recorded_on": "this host (test)",
                                                                "int8_isa": int8_isa()})
    return d


class Swapped:
    """The int8 encoder's fingerprint, provider and session, computing with another encoder."""

    def __init__(self, real, other, model_dir=None):
        self.real, self.other, self.swapped = real, other, False
        self.fingerprint, self.provider, self.model_dir, self.session = (real.fingerprint, real.provider,
                                                                         model_dir or real.model_dir, real.session)

    def encode(self, texts):
        return (self.other if self.swapped else self.real).encode(texts)


def test_shipped_reference_matches_bit_for_bit(int8):
    path = reference_path(int8.model_dir, int8.fingerprint, int8.provider)
    vectors, meta = read_reference(path)
    assert meta["fingerprint"] == int8.fingerprint and meta["texts"] == len(load_texts(int8.model_dir)) >= 12
    assert meta["noise"]["max_abs_diff"] == 0.0  # int8 on CPU is deterministic (recorded with the reference)
    if not _same_int8_kernels(meta):
        pytest.skip(f"the shipped int8 reference was recorded on a CPU with other int8 instructions "
                    f"({meta.get('int8_isa')!r}): this host keeps a local one "
                    "(test_a_shipped_reference_of_another_cpu_class_is_not_used)")
    res = EncoderCanary(int8).check()
    assert res.reference == "shipped" and not res.changed
    assert res.max_abs_diff == 0.0 and res.worst_cosine == pytest.approx(1.0, abs=1e-12)


def _same_int8_kernels(meta) -> bool:
    """False when the reference does not say it was recorded on a CPU with this one's int8 ISA."""
    from app.drift.canary import int8_isa

    return meta.get("int8_isa") == int8_isa()


def test_the_other_variant_under_the_same_fingerprint_is_a_change(int8, fp32, host_dir):
    enc = Swapped(int8, fp32, host_dir)
    enc.swapped = True
    res = EncoderCanary(enc).check()
    assert res.changed and res.reference == "shipped"
    assert WORST_FP32_VS_INT8 - 0.001 < res.worst_cosine < 0.99  # 0.9641 / 0.9777 on the two CPU classes
    assert res.max_abs_diff > 1e-3


def test_a_shipped_reference_of_another_cpu_class_is_not_used(int8, host_dir, tmp_path):
    import shutil

    from app.drift.canary import write_reference

    d = tmp_path / "model"
    shutil.copytree(host_dir, d)
    path = reference_path(d, int8.fingerprint, int8.provider)
    vectors, meta = read_reference(path)
    write_reference(path, vectors, {**meta, "int8_isa": "another-cpu-class"})
    can = EncoderCanary(Swapped(int8, None, d), state_dir=tmp_path / "state")
    assert can.reference_kind == "none"
    first = can.check()
    assert first.reference == "recorded-now" and not first.changed


def test_a_tiny_change_is_caught_by_the_coordinate_tolerance(int8, host_dir):
    class Nudged(Swapped):
        def encode(self, texts):
            v = self.real.encode(texts).copy()
            v[0, 0] += 1e-5  # 1 - cosine ~1e-10: under the cosine tolerance, over the coordinate one
            return v

    res = EncoderCanary(Nudged(int8, None, host_dir)).check()
    assert res.changed and 1.0 - res.worst_cosine < res.tolerance and res.max_abs_diff > res.abs_tolerance


def test_no_shipped_reference_records_a_local_one(int8, tmp_path):
    enc = Swapped(int8, None)
    enc.provider = "CUDAExecutionProvider"  # nothing recorded for it here
    first = EncoderCanary(enc, state_dir=tmp_path).check()
    assert first.reference == "recorded-now" and not first.changed
    assert reference_path(tmp_path, enc.fingerprint, enc.provider).exists()
    again = EncoderCanary(enc, state_dir=tmp_path)
    assert again.reference_kind == "local" and not again.check().changed


def _batch(v, start):
    n = len(v)
    return SimpleNamespace(vectors=v, norms=np.ones(n, np.float32), vector_doc_ids=[f"d{start + i}" for i in range(n)],
                           vector_records=[SimpleNamespace(partition=0, offset=start + i, timestamp_ms=1000 * (start + i))
                                           for i in range(n)])


def test_drift_stage_reports_a_silent_encoder_change_within_one_canary_period(int8, fp32, host_dir, tmp_path):
    from app.alerts import DriftStage, decode_alert_message, encode_alert_message, format_alert
    from app.drift.canary import compare

    enc = Swapped(int8, fp32, host_dir)
    ref, _ = read_reference(reference_path(host_dir, int8.fingerprint, int8.provider))
    worst = float(compare(fp32.encode(load_texts(host_dir)), ref)[0].min())  # 0.9641 on the recording CPU
    rng = np.random.default_rng(0)
    stage = DriftStage(enc.fingerprint, "docs", tmp_path, DriftConfig(warmup=1000), encoder=enc, canary_every=8)
    got = []
    for b in range(40):
        if b == 13:
            enc.swapped = True  # the encoder silently computes something else from batch 13 on
        v = rng.normal(size=(16, 384)).astype(np.float32)
        got.append((b, stage.observe(_batch(v / np.linalg.norm(v, axis=1, keepdims=True), b * 16))))
    changed = [(b, a) for b, alerts in got for a in alerts if a.kind is AlertKind.ENCODER_CHANGED]
    # the checks after batches 7, 15, 23, ...: found with batch 15 (within one period of 8), reported once
    assert [b for b, _ in changed] == [15]
    a = changed[0][1]
    assert a.canary.reason == "periodic" and a.canary.worst_cosine == pytest.approx(worst, abs=1e-9)
    assert worst < 0.99
    assert a.severity.value == "CRITICAL" and a.kafka_key == f"{int8.fingerprint}/docs".encode()
    assert decode_alert_message(encode_alert_message(a)) == a
    assert f"canary: worst cosine {worst:.4f}"[:-1] in format_alert(a)
    # a reload is checked at once, with the next batch
    enc.swapped = False
    stage.encoder_reloaded()
    checks = stage.canary.checks
    assert stage.observe(_batch(v, 999)) == []
    assert stage.canary.checks == checks + 1 and not stage.canary.last.changed


def test_drift_stage_start_up_check_is_returned_with_the_first_batch(int8, fp32, host_dir, tmp_path):
    from app.alerts import DriftStage

    enc = Swapped(int8, fp32, host_dir)
    enc.swapped = True
    stage = DriftStage(enc.fingerprint, "docs", tmp_path, encoder=enc, canary_every=64)
    first = stage.observe(_batch(np.eye(4, 384, dtype=np.float32), 0))
    assert [a.kind for a in first] == [AlertKind.ENCODER_CHANGED] and first[0].canary.reason == "start-up"
    assert stage.observe(_batch(np.eye(4, 384, dtype=np.float32), 4)) == []


def test_a_new_session_is_checked_even_at_the_freed_one_s_address(int8, tmp_path):
    """A model reload the worker did not announce is noticed by the session object changing. The
    new session often lands at the address of the freed old one, so ``id()`` cannot tell them apart."""
    from app.alerts import DriftStage

    class Session:
        pass

    enc = Swapped(int8, None)
    enc.session = Session()
    stage = DriftStage(enc.fingerprint, "docs", tmp_path, encoder=enc, canary_every=64)
    stage.observe(_batch(np.eye(4, 384, dtype=np.float32), 0))
    checks, old_address = stage.canary.checks, id(enc.session)
    enc.session = None       # the old session is freed ...
    enc.session = Session()  # ... and the reloaded one takes its place
    stage.observe(_batch(np.eye(4, 384, dtype=np.float32), 4))
    assert stage.canary.checks == checks + 1, f"same address: {id(enc.session) == old_address}"
