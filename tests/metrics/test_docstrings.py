"""The runnable examples in the metric docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = ["base", "disagreement", "embeddings", "fisher", "prediction", "stats"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"fmaudit.metrics.{name}")
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
