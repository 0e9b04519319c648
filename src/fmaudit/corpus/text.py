"""Plain UTF-8 text corpora (``.txt``, ``.txt.gz``): documents separated by blank lines.

A document is a maximal run of non-blank lines; its text is those lines joined by ``\\n`` with
trailing whitespace removed (Windows line ends become ``\\n``, a UTF-8 BOM is dropped). Documents
are named ``doc1``, ``doc2``, ... in file order. Text corpora are small next to genomes, so the
documents are held in memory.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from fmaudit.errors import FmauditError


def read_text_file(path: Path) -> str:
    """Decoded text of ``path`` (gzip by magic number); errors name the file and the byte."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise FmauditError(f"{path}: cannot read ({exc}) "
                           "(is the file truncated or corrupt?)") from None
    if not data.strip():
        raise FmauditError(f"{path}: the file is empty (a text corpus needs UTF-8 text, "
                           "documents separated by blank lines)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise FmauditError(f"{path}: contains binary data (NUL byte at offset {nul}), "
                           "not UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FmauditError(f"{path}: not UTF-8: invalid byte at offset {exc.start} "
                           "(convert it, e.g. `iconv -f latin1 -t utf-8`)") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def split_documents(text: str) -> list[str]:
    """Documents of ``text``: runs of non-blank lines, joined by ``\\n``, trailing spaces cut."""
    docs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


class TextSource:
    """Documents of a text file; ``read`` returns characters ``[start, end)`` of one document."""

    kind = "text"

    def __init__(self, path: Path) -> None:
        self.path = path
        docs = split_documents(read_text_file(path))
        if not docs:
            raise FmauditError(f"{path}: contains no text")
        self._docs = {f"doc{i + 1}": d for i, d in enumerate(docs)}

    def records(self) -> list[tuple[str, int]]:
        """``(name, length in characters)`` of every document, in file order."""
        return [(name, len(doc)) for name, doc in self._docs.items()]

    def read(self, record: str, start: int, end: int) -> str:
        return self._docs[record][start:end]

    def close(self) -> None:
        pass
