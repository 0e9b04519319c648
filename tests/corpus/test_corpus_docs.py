"""The runnable examples in the corpus and tokenizer docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["fmaudit.corpus", "fmaudit.corpus.stats", "fmaudit.tokenizer"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
