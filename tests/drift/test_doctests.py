"""Run the examples in the docstrings of app.drift (river style) as part of tests/drift."""
import doctest
import importlib

import pytest

MODULES = ["signals", "scan", "nulls", "reference", "detectors", "alert", "canary", "calibration", "monitor", "states",
           "variants",
           "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    mod = importlib.import_module("app.drift" if name == "__init__" else f"app.drift.{name}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "__init__":
        assert result.attempted > 0
