"""Text encoder: all-MiniLM-L6-v2 in ONNX Runtime (onnxruntime + tokenizers + numpy only).

    >>> enc = Encoder.load(variant="int8")            # doctest: +SKIP
    >>> enc.encode(["hello world"]).shape             # doctest: +SKIP
    (1, 384)

* Artefacts (ONNX files + corrected tokenizer) live in ``app/model/all-MiniLM-L6-v2`` and
  are checked against the sha256 in their ``manifest.json`` when loaded.
* Mean pooling over the attention mask, then L2 normalisation (as sentence-transformers).
* Inputs are truncated at 256 tokens; a batch is sorted by length and cut into
  micro-batches under a token budget, so padding stays small.
* CUDA execution provider when a usable GPU is present (``device="auto"``), CPU
  otherwise. ``int8`` is the default on CPU, ``fp32`` on GPU (and selectable anywhere).
* :attr:`Encoder.fingerprint` names the vector space: model, variant, artefact hash,
  max length and pooling. Vectors of two fingerprints must never share a collection.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent / "model" / "all-MiniLM-L6-v2"
VARIANTS = ("int8", "fp32")


class EncoderError(RuntimeError):
    """The encoder cannot be loaded or used as configured."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a vector space."""

    model: str
    variant: str
    artefact_sha256: str  # of the ONNX file and tokenizer together
    max_length: int
    pooling: str
    dim: int

    def __str__(self) -> str:
        name = self.model.rsplit("/", 1)[-1]
        return (f"{name}:{self.variant}:{self.artefact_sha256[:12]}:"
                f"len{self.max_length}:{self.pooling}:d{self.dim}")

    def as_dict(self) -> dict:
        return {"model": self.model, "variant": self.variant,
                "artefact_sha256": self.artefact_sha256, "max_length": self.max_length,
                "pooling": self.pooling, "dim": self.dim}


def cuda_usable() -> bool:
    """True when onnxruntime offers CUDA *and* a session can actually be placed on it."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    # onnxruntime-gpu lists CUDA even without a GPU; ask the driver instead of trusting it.
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


class Encoder:
    """Sentence encoder over an ONNX Runtime session. Thread-safe for ``encode`` calls."""

    def __init__(self, *, variant: str | None = None, device: str = "auto",
                 model_dir: Path | str | None = None, threads: int | None = None,
                 spin_wait: bool = False, cpu_arena: bool = False,
                 max_batch_tokens: int = 8192, verify: bool = True):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir) if model_dir else MODEL_DIR
        manifest_path = self.model_dir / "manifest.json"
        if not manifest_path.exists():
            raise EncoderError(f"no model manifest at {manifest_path}; run `make model` to build the artefacts")
        self.manifest = json.loads(manifest_path.read_text())

        if device not in ("auto", "cpu", "cuda"):
            raise EncoderError(f"device must be auto, cpu or cuda, not {device!r}")
        use_cuda = device == "cuda" or (device == "auto" and cuda_usable())
        if device == "cuda" and not cuda_usable():
            raise EncoderError("device=cuda was asked for but no usable CUDA GPU / onnxruntime-gpu is present")
        if variant is None:
            variant = "fp32" if use_cuda else "int8"
        if variant not in self.manifest["variants"]:
            raise EncoderError(f"unknown model variant {variant!r}; have {sorted(self.manifest['variants'])}")
        self.variant = variant
        onnx_name = self.manifest["variants"][variant]["file"]
        onnx_path = self.model_dir / onnx_name
        tok_path = self.model_dir / "tokenizer.json"
        for p in (onnx_path, tok_path):
            want = self.manifest["files"][p.name]["sha256"]
            if not p.exists():
                raise EncoderError(f"model artefact missing: {p}")
            if verify:
                got = _sha256(p)
                if got != want:
                    raise EncoderError(f"sha256 mismatch for {p}: manifest {want[:16]}…, file {got[:16]}… "
                                       "(corrupt checkout or git-lfs pointer?); rebuild with `make model`")

        self.max_length = int(self.manifest["max_length"])
        self.dim = int(self.manifest["dim"])
        self.max_batch_tokens = max(max_batch_tokens, self.max_length)
        # Dynamic int8 quantises activations with one scale per tensor, so a row's vector
        # would depend on the other rows (and padding) of its batch (cosine down to 0.95
        # measured). Run int8 one sequence per call: deterministic per text, no padding,
        # and on CPU not slower (34.7 vs 17.4 docs/s measured on the sample corpus).
        self.max_rows = 1 if variant == "int8" else None
        art = hashlib.sha256((self.manifest["files"][onnx_name]["sha256"] +
                              self.manifest["files"]["tokenizer.json"]["sha256"]).encode()).hexdigest()
        self.fingerprint_info = Fingerprint(
            model=self.manifest["model"], variant=variant, artefact_sha256=art,
            max_length=self.max_length, pooling="mean-l2", dim=self.dim)
        self.fingerprint = str(self.fingerprint_info)

        tok = Tokenizer.from_file(str(tok_path))
        tok.no_padding()
        tok.no_truncation()
        self.tokenizer = tok  # un-truncated, for chunking and counting
        self.cls_id = tok.token_to_id("[CLS]")
        self.sep_id = tok.token_to_id("[SEP]")
        self.pad_id = tok.token_to_id("[PAD]")

        self.threads = threads or (os.cpu_count() or 1)
        # int8 on CPU: rows run one per call, so parallelise across rows (one single-threaded
        # session shared by `threads` Python threads; session.run is thread-safe and releases
        # the GIL) rather than inside one small call: 27 vs 33 CPU ms per document, measured
        row_parallel = self.max_rows == 1 and not use_cuda and self.threads > 1
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1 if row_parallel else self.threads
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = cpu_arena
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda
                     else ["CPUExecutionProvider"])
        self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock() if self.provider == "CUDAExecutionProvider" else None
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="ort-row")
                      if row_parallel else None)
        log.info("encoder loaded: %s on %s", self.fingerprint, self.provider)

    @classmethod
    def load(cls, variant: str | None = None, **kw) -> "Encoder":
        return cls(variant=variant, **kw)

    # -- tokenisation -------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids (no special tokens, not truncated) of each text."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    # -- encoding -----------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, shape (len(texts), dim)."""
        return self.encode_with_norms(texts)[0]

    def encode_with_norms(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors plus the mean-pooled vectors' norms before normalisation (a drift signal)."""
        return self.encode_tokens(self.token_ids(texts))

    def encode_tokens(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Encode content token ids (CLS/SEP are added; longer inputs are truncated).

        Returns (vectors, norms). A row whose pooled vector is not finite is returned
        as NaN so the caller can dead-letter it instead of storing garbage.
        """
        n = len(token_ids)
        out = np.empty((n, self.dim), dtype=np.float32)
        norms = np.empty(n, dtype=np.float32)
        if n == 0:
            return out, norms
        limit = self.max_length - 2
        seqs = [[self.cls_id, *ids[:limit], self.sep_id] for ids in token_ids]
        order = sorted(range(n), key=lambda i: len(seqs[i]))
        if self._pool is not None and n > 1:
            # longest rows first, each thread takes the next row when it is free: the threads
            # finish within about one short row of each other (a fixed round-robin deal left one
            # thread idle while the other ran the batch's last long rows)
            queue = iter(order[::-1])
            take = threading.Lock()

            def run_rows():
                while True:
                    with take:
                        i = next(queue, None)
                    if i is None:
                        return
                    out[i], norms[i] = (a[0] for a in self._run([seqs[i]]))
            for f in [self._pool.submit(run_rows) for _ in range(min(self.threads, n))]:
                f.result()
            return out, norms
        start = 0
        while start < n:
            # grow the micro-batch while (rows x longest) stays under the token budget
            end = start + 1
            while (end < n and (self.max_rows is None or end - start < self.max_rows)
                   and (end + 1 - start) * len(seqs[order[end]]) <= self.max_batch_tokens):
                end += 1
            idx = order[start:end]
            vecs, nrm = self._run([seqs[i] for i in idx])
            out[idx] = vecs
            norms[idx] = nrm
            start = end
        return out, norms

    def _run(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if self._lock is not None:
            with self._lock:
                hidden = self.session.run(None, feeds)[0]
        else:
            hidden = self.session.run(None, feeds)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            vecs = pooled / np.maximum(norms, 1e-12)[:, None]
        bad = ~np.isfinite(vecs).all(axis=1)
        if bad.any():
            vecs[bad] = np.nan
        return vecs.astype(np.float32, copy=False), norms.astype(np.float32, copy=False)
