"""The known-variant signals (app/drift/variants.py, ``variant_<name>`` in app/drift/signals.py)."""
from dataclasses import replace

import numpy as np
import pytest

from app.drift import DriftConfig, DriftMonitor
from app.drift.reference import Reference, learn_reference
from app.drift.variants import MEANS_FILE, read_means, variant_name, variant_offsets, write_means
from app.encoder import MODEL_DIR

from .synth import centres, feed, sample

KEY = ("model:int8:abc", "docs")
# Pinned outcomes of the seeded encoder-swap stream below (default DriftConfig()): with the known
# offset the swap at 6000 is first seen by `variant_fp32`; without it, by `shift` at 6147
# (test_monitor.SMALL_SHIFT_FIRST, the same stream).
VARIANT_FIRST = ("FIRED", 6055, ["variant_fp32"])


class FakeClock:
    def __call__(self):
        return 1_700_000_000.0


def _swap_stream():
    # test_monitor.test_small_mean_shift_is_seen_by_the_shift_scan_only's stream: every vector
    # moves by the same small offset at event 6000, the topic mix is unchanged
    c = centres(71)
    rng = np.random.default_rng(72)
    v0, n0 = sample(rng, c, range(6), 6000)
    bias = np.random.default_rng(73).normal(size=c.shape[1]) * 0.12
    v1, n1 = sample(rng, c, range(6), 2000, bias=bias)
    # the recorded offset: another set of "texts" (draws) with and without the bias, as
    # `load.drift_variants --record` measures it on the text set shipped with the model
    a, _ = sample(np.random.default_rng(74), c, range(6), 500)
    b, _ = sample(np.random.default_rng(74), c, range(6), 500, bias=bias)
    return np.vstack([v0, v1]), np.concatenate([n0, n1]), b.mean(axis=0) - a.mean(axis=0)


def test_a_swap_along_a_known_offset_is_seen_by_its_signal_first(tmp_path):
    v, n, offset = _swap_stream()
    mon = DriftMonitor(KEY, tmp_path / "with", clock=FakeClock(), variants={"fp32": offset})
    alerts = feed(mon, v, n)
    assert "variant_fp32" in mon.signal_names
    first = alerts[0]
    assert (first.kind.value, first.event_index, first.signals) == VARIANT_FIRST
    # the same stream without the offset: only the `shift` scan sees it, 92 events later
    alone = feed(DriftMonitor(KEY, tmp_path / "without", clock=FakeClock()), v, n)
    assert (alone[0].event_index, alone[0].signals) == (6147, ["shift"])


def test_an_offset_the_stream_does_not_take_stays_quiet(tmp_path):
    # a change in another direction (a topic switch) is not reported by the variant signal alone,
    # and a drift-free stream gives it no alarm
    c = centres(21)
    rng = np.random.default_rng(22)
    offset = np.random.default_rng(5).normal(size=c.shape[1]) * 1e-3
    mon = DriftMonitor(KEY, tmp_path, clock=FakeClock(), variants={"fp32": offset})
    alerts = []
    for _ in range(50):
        vv, nn = sample(rng, c, range(6), 1000)
        alerts += mon.observe(vv, norms=nn)
    assert alerts == [] and mon.status()["alarms_by_signal"].get("variant_fp32", 0) == 0


def test_variant_directions_survive_a_restart(tmp_path):
    v, n, offset = _swap_stream()
    mon = DriftMonitor(KEY, tmp_path, clock=FakeClock(), variants={"fp32": offset})
    feed(mon, v[:3000], n[:3000])
    mon.close()
    # restored without being given the offsets: the reference keeps the signals it was fitted with
    again = DriftMonitor(KEY, tmp_path, clock=FakeClock())
    assert again.signal_names == mon.signal_names and "variant_fp32" in again.signal_names
    np.testing.assert_array_equal(again.reference.basis.variants, mon.reference.basis.variants)
    rest = feed(again, v[3000:], n[3000:])
    # (the restored detectors are primed again, so the delay may differ by a few blocks)
    assert rest and rest[0].signals == ["variant_fp32"] and 6000 < rest[0].event_index < 6100


def test_reference_round_trip_and_the_test_direction():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 16)) * np.linspace(2.0, 0.05, 16)
    x = (x + 3 / np.sqrt(16)).astype(np.float32)
    d = np.zeros(16)
    d[-1] = 0.01  # along the lowest-variance axis
    ref, z = learn_reference(x, n_axes=1, n_whiten=4, n_clusters=2, windows=(), directions={"fp32": d, "fp16": -d})
    assert ref.names[-2:] == ("variant_fp16", "variant_fp32")  # sorted by name
    np.testing.assert_allclose(np.nanstd(z[:, -1]), 1.0, atol=0.1)
    back = Reference.from_arrays(ref.to_arrays())
    assert back.names == ref.names
    np.testing.assert_array_equal(back.raw(x[:50]), ref.raw(x[:50]))
    # a shift of d moves the signal by |d| / sd(lowest axis) = 0.01 / 0.05 sd (shrinkage aside)
    moved = ref.signals(x[1500:] + d.astype(np.float32))[:, -1] - ref.signals(x[1500:])[:, -1]
    assert 0.12 < float(np.mean(moved)) <= 0.2
    with pytest.raises(ValueError, match="finite vector of dimension 16"):
        learn_reference(x, windows=(), n_whiten=4, directions={"bad": np.ones(15)})


def test_the_shipped_means_give_each_variant_the_other():
    got = read_means(MODEL_DIR / MEANS_FILE)
    assert got is not None, "run `python -m load.drift_variants --record`"
    fps, means, meta = got
    assert sorted(variant_name(f) for f in fps) == ["fp32", "int8"] and meta["texts"] >= 500
    i8 = next(f for f in fps if variant_name(f) == "int8")
    f32 = next(f for f in fps if variant_name(f) == "fp32")
    up, down = variant_offsets(MODEL_DIR, i8), variant_offsets(MODEL_DIR, f32)
    assert list(up) == ["fp32"] and list(down) == ["int8"]
    np.testing.assert_allclose(up["fp32"], -down["int8"])
    # the quantisation moves the mean of unit vectors by a few hundredths
    assert 0.01 < np.linalg.norm(up["fp32"]) < 0.1
    assert variant_offsets(MODEL_DIR, "another:model:fingerprint") == {}
    assert variant_offsets(None, i8) == {}


def test_means_file_round_trip_and_checks(tmp_path):
    write_means(tmp_path / MEANS_FILE, ["m:a:1", "m:b:2"], np.eye(2, 4), {"texts": 2})
    assert (tmp_path / MEANS_FILE).stat().st_mode & 0o777 == 0o644  # shipped beside the model: readable by all
    assert variant_offsets(tmp_path, "m:a:1")["b"].tolist() == [-1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2 fingerprints"):
        write_means(tmp_path / MEANS_FILE, ["m:a:1", "m:b:2"], np.eye(3, 4), {})


def test_no_variant_signal_without_a_full_rank_fit():
    # fewer fit rows than dimensions (a 200-event warm-up has 150): the Fisher direction would be
    # mostly the shrinkage's, and its values on the fit rows degenerate (in-sample, nearly constant),
    # which made the warm-up's test of serial independence reject an i.i.d. stream
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 32)).astype(np.float32) + 1
    d = np.full(32, 0.01)
    small, _ = learn_reference(x, n_axes=1, n_whiten=4, n_clusters=2, windows=(), directions={"fp32": d})
    assert not any(n.startswith("variant_") for n in small.names)  # 20 fit rows, 32 dimensions
    big, _ = learn_reference(np.vstack([x] * 4) + rng.normal(size=(160, 32)).astype(np.float32), n_axes=1,
                             n_whiten=4, n_clusters=2, windows=(), directions={"fp32": d})
    assert "variant_fp32" in big.names  # 80 fit rows


def test_variant_alerts_do_not_depend_on_the_batching(tmp_path):
    v, n, offset = _swap_stream()
    runs = []
    for i, batch in enumerate((1, 37, 1000)):
        mon = DriftMonitor(KEY, tmp_path / str(i), clock=FakeClock(), variants={"fp32": offset})
        runs.append([(a.kind, a.event_index, a.signals, a.alert_id, a.message) for a in feed(mon, v, n, batch=batch)])
    assert runs[0] == runs[1] == runs[2] and runs[0][0][1] == VARIANT_FIRST[1]


# ---------------------------------------------------------------- the host's own means
HOST_TEXTS = ["A short text.", "The quick brown fox jumps over the lazy dog.",
              "Kafka offsets are committed only after the store acknowledged every write.",
              "Drift alerts go to their own topic.", "ein deutscher Satz", "x"]


def _model_copy(tmp_path, texts=HOST_TEXTS):
    """The real model's artefacts (linked) with a small variant text set and no means file."""
    d = tmp_path / "model"
    d.mkdir()
    for f in MODEL_DIR.iterdir():
        if f.name not in (MEANS_FILE, "variant-texts.txt"):
            (d / f.name).symlink_to(f)
    (d / "variant-texts.txt").write_text("# test set\n" + "\n".join(texts) + "\n", encoding="utf-8")
    return d


def _loader(model_dir, calls):
    from app.encoder import Encoder

    def load(variant):
        calls.append(variant)
        return Encoder.load(variant=variant, device="cpu", model_dir=model_dir)

    return load


def _refusing(variant):
    raise AssertionError(f"the {variant} encoder was loaded: the means were recorded again")


def test_means_recorded_on_another_cpu_class_are_recorded_again_on_this_host(tmp_path, caplog):
    from app.drift.variants import host_variant_offsets, means_meta
    from app.encoder import Encoder

    model = _model_copy(tmp_path)
    enc = Encoder.load(variant="int8", device="cpu", model_dir=model)
    f32 = Encoder.load(variant="fp32", device="cpu", model_dir=model)
    want = f32.encode(HOST_TEXTS).astype(np.float64).mean(axis=0) - enc.encode(HOST_TEXTS).astype(np.float64).mean(axis=0)
    # a shipped file recorded on a CPU with other int8 instructions, with a direction that is not this host's
    other = {**means_meta(HOST_TEXTS, enc.provider), "int8_isa": "avx2"} if "vnni" in means_meta(
        HOST_TEXTS, enc.provider)["int8_isa"] else {**means_meta(HOST_TEXTS, enc.provider), "int8_isa": "avx2 avx512_vnni"}
    write_means(model / MEANS_FILE, [enc.fingerprint, f32.fingerprint], np.vstack([np.zeros(384), np.full(384, 0.05)]),
                other)
    calls = []
    with caplog.at_level("WARNING", logger="app.drift.variants"):
        got = host_variant_offsets(enc, _loader(model, calls), cache_dir=tmp_path / "cache")
    assert calls == ["fp32"] and "recording them here, once" in caplog.text and "int8_isa" in caplog.text
    assert list(got) == ["fp32"]
    np.testing.assert_allclose(got["fp32"], want, atol=1e-7)
    # cached for the host: every later worker (any state directory) reads it, and records nothing
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.stat().st_mode & 0o777 == 0o644
    again = host_variant_offsets(enc, _refusing, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again["fp32"], got["fp32"])
    # the fp32 monitor's offset is the other way round, from the same recording
    down = host_variant_offsets(f32, _refusing, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(down["int8"], -want, atol=1e-7)
    # a means file recorded for this host is used as shipped, without embedding anything
    write_means(model / MEANS_FILE, [enc.fingerprint, f32.fingerprint], np.vstack([np.zeros(384), np.full(384, 0.05)]),
                means_meta(HOST_TEXTS, enc.provider))
    assert host_variant_offsets(enc, _refusing, cache_dir=tmp_path / "empty")["fp32"].tolist() == [0.05] * 384
    # ... unless the text set changed since (the means are of other texts)
    (model / "variant-texts.txt").write_text("\n".join(HOST_TEXTS[:3]) + "\n", encoding="utf-8")
    assert host_variant_offsets(enc, _refusing, cache_dir=tmp_path / "empty", record=False) == {}


def test_a_variant_that_cannot_be_recorded_costs_the_signal_not_the_worker(tmp_path, caplog, monkeypatch):
    from app.alerts import DriftStage
    from app.drift.variants import host_variant_offsets
    from app.encoder import Encoder

    model = _model_copy(tmp_path)
    enc = Encoder.load(variant="int8", device="cpu", model_dir=model)

    def broken(variant):
        raise OSError(f"model-{variant}.onnx: no such file")

    with caplog.at_level("WARNING", logger="app.drift.variants"):
        assert host_variant_offsets(enc, broken, cache_dir=tmp_path / "cache") == {}
    assert "could not record the variant means on this host (OSError" in caplog.text
    assert not (tmp_path / "cache").exists()
    # the worker's drift stage records the host's means itself (no means file beside this model)
    # into the host's cache, and its monitor gets the signal
    monkeypatch.setenv("EMBEDSTREAM_CACHE_DIR", str(tmp_path / "host"))
    stage = DriftStage(enc.fingerprint, "docs", tmp_path / "state", encoder=enc, canary_every=0)
    assert list(stage.monitor.variants) == ["fp32"]
    assert len(list((tmp_path / "host" / "variant-means").iterdir())) == 1
