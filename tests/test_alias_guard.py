"""A worker refuses to consume when the alias readers query points at another model's collection
(e.g. a GPU fp32 worker joining the CPU int8 worker's group): it would commit the group's offsets
while writing vectors that no search through the alias reads. Old-side workers of a reindex that
is under way are let through."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.reindex import ReindexError, check_worker_alias, lancedb_dir, state_path, variant_fingerprint
from app.store.lancedb import collection_name, set_alias
from conftest import REPO, settings_env

INT8, FP32 = variant_fingerprint("int8"), variant_fingerprint("fp32")


def _point_alias_at(settings, fingerprint):
    lancedb_dir(settings).mkdir(parents=True, exist_ok=True)
    set_alias(lancedb_dir(settings), settings.collection_prefix,
              collection_name(settings.collection_prefix, fingerprint), fingerprint, settings.collection_prefix)


def test_check_worker_alias_rules(settings):
    assert check_worker_alias(settings, INT8) == "no alias yet"
    _point_alias_at(settings, INT8)
    assert "this worker's model" in check_worker_alias(settings, INT8)
    with pytest.raises(ReindexError, match="EMBEDSTREAM_MODEL_VARIANT=int8"):
        check_worker_alias(settings, FP32)
    # an old-side worker of a reindex that has swapped the alias (int8 -> fp32) may still run
    _point_alias_at(settings, FP32)
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"phase": "swapped", "old": {"fingerprint": INT8}, "new": {"fingerprint": FP32}}
    path.write_text(json.dumps(state))
    assert "old side" in check_worker_alias(settings, INT8)
    path.write_text(json.dumps({**state, "phase": "finished"}))
    with pytest.raises(ReindexError):
        check_worker_alias(settings, INT8)
    assert "consuming anyway" in check_worker_alias(settings.replace(allow_alias_mismatch=True), INT8)


def test_worker_of_another_model_refuses_to_start(settings, tmp_path):
    _point_alias_at(settings, FP32)  # the alias serves fp32 vectors; this worker would write int8
    env = {**settings_env(settings), "EMBEDSTREAM_MODEL_VARIANT": "int8"}
    r = subprocess.run([sys.executable, "-m", "app", "worker"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "refusing to consume" in r.stderr and "EMBEDSTREAM_MODEL_VARIANT=fp32" in r.stderr
    assert "Traceback" not in r.stderr
