"""`embedstream demo`, the README's first command, end to end on its embedded stack (Tansu broker,
worker subprocess, LanceDB, the real int8 model): it must index the bundled corpus and answer
the sample queries with the documents written about them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.tansu


def test_demo_indexes_the_sample_corpus_and_finds_the_right_documents(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    env["EMBEDSTREAM_DATA_DIR"] = str(tmp_path / "data")
    r = subprocess.run([sys.executable, "-m", "app", "demo", "--timeout", "240"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "60 documents" in out, out[-4000:]
    # each sample query's best hit is the document written about it
    sections = {s.split("\n", 1)[0]: s for s in out.split('search: "')[1:]}
    best = {q.rstrip('"'): s.split("\n")[1] for q, s in sections.items()}
    assert "cooking-01" in best["best way to proof bread dough"], best
    assert "networking-01" in best["what happens in a TCP handshake"], best
    assert (tmp_path / "data" / "demo" / "lancedb").is_dir()
