"""Shared test helpers. Keep this file minimal and append-only (several areas add fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    """Write ``records`` (name -> sequence) as FASTA wrapped at ``width`` characters."""
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}")
        lines.extend(seq[i:i + width] for i in range(0, len(seq), width))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_fasta(tmp_path: Path) -> Callable[..., Path]:
    """``make_fasta(records, name="x.fa", width=60)`` -> path of a FASTA in ``tmp_path``."""

    def make(records: dict[str, str], name: str = "genome.fa", width: int = 60) -> Path:
        return write_fasta(tmp_path / name, records, width)

    return make


@pytest.fixture
def make_text(tmp_path: Path) -> Callable[..., Path]:
    """``make_text(documents, name="x.txt")`` -> UTF-8 file, documents separated by a blank line."""

    def make(documents: list[str], name: str = "corpus.txt") -> Path:
        path = tmp_path / name
        path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
        return path

    return make
