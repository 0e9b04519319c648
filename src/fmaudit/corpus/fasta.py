"""FASTA access through pyfaidx: random access to any stretch without loading the genome.

The ``.fai`` index is built once, atomically (temporary name, then rename), so concurrent
processes never read a half-written index. Plain gzip cannot be read at random offsets: a
plain-gzip FASTA up to ``GZIP_LIMIT`` bytes is decompressed once into the index folder; a larger
one must be recompressed with ``bgzip``. BGZF (bgzip) files are read in place when biopython is
installed (pyfaidx uses it), and otherwise decompressed like plain gzip.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path

from fmaudit.errors import FmauditError

GZIP_LIMIT = 256 * 2**20  # decompressed bytes we are willing to copy for a plain-gzip FASTA
SNIFF_BYTES = 1 << 16


def cache_dir() -> Path:
    """Where indexes of read-only bundled files and decompressed copies go by default.

    ``$FMAUDIT_CACHE``, else ``$XDG_CACHE_HOME/fmaudit``, else ``~/.cache/fmaudit``.
    """
    if os.environ.get("FMAUDIT_CACHE"):
        return Path(os.environ["FMAUDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fmaudit"


def gzip_kind(path: Path) -> str | None:
    """``None`` (not gzip), ``"gzip"`` or ``"bgzf"`` (gzip members with the BGZF 'BC' field)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return None
    # BGZF: FLG.FEXTRA set, XLEN=6, subfield SI1='B' SI2='C' SLEN=2 (SAM/BAM spec, section 4.1)
    if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _have_biopython() -> bool:
    try:
        from Bio import bgzf  # noqa: F401
    except ImportError:
        return False
    return True


def _dir_writable(folder: Path) -> bool:
    """True when a file can be created in ``folder`` (tested, not guessed from mode bits)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fmaudit-write-test.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _fresh(index: Path, source: Path) -> bool:
    return index.exists() and index.stat().st_mtime >= source.stat().st_mtime


def _path_tag(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]


def sniff_fasta(path: Path, head: bytes) -> None:
    """Reject binary junk and non-FASTA text from the first bytes of the (decompressed) file."""
    if b"\x00" in head:
        raise FmauditError(f"{path}: contains binary data, not FASTA text "
                           "(give a .fa/.fasta file, plain or bgzip-compressed)")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FmauditError(f"{path}: byte {exc.start} is not ASCII; a FASTA file is plain "
                           "ASCII text (is this a binary or a mis-named file?)") from None
    stripped = text.lstrip()
    if not stripped:
        raise FmauditError(f"{path}: the file is empty (only whitespace)")
    if not stripped.startswith(">"):
        raise FmauditError(f"{path}: not a FASTA file: the first line must start with '>' "
                           "(is it a text corpus? name it .txt)")


def _read_head(path: Path, compressed: bool) -> bytes:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise FmauditError(f"{path}: cannot read the gzip stream ({exc}) "
                           "(is the file truncated or corrupt?)") from None


class FastaSource:
    """Records of a FASTA file; ``read`` returns raw characters of ``[start, end)``."""

    kind = "dna"

    def __init__(self, path: Path, fai_dir: str | None, *, bundled: bool = False,
                 sha256: str | None = None) -> None:
        self.path = path
        self._bundled = bundled
        self._fai_dir = Path(fai_dir) if fai_dir else None
        self._sha = sha256
        self.fasta_path = path  # the file pyfaidx reads (a decompressed copy for plain gzip)
        gz = gzip_kind(path)
        sniff_fasta(path, _read_head(path, compressed=gz is not None))
        in_place_bgzf = gz == "bgzf" and _have_biopython()
        if gz is not None and not in_place_bgzf:
            self.fasta_path = self._decompressed_copy(gz)
        fai, gzi = self._ensure_index(in_place_bgzf)
        self._fasta = self._open(fai, gzi)
        self._lengths = {name: int(rec.rlen) for name, rec in self._fasta.faidx.index.items()}
        empty = [name for name, n in self._lengths.items() if n == 0]
        if empty:
            raise FmauditError(f"{path}: record {empty[0]!r} has a header but no sequence "
                               "(remove the empty record)")

    # ------------------------------------------------------------------ index management
    def _checked_fai_dir(self) -> Path:
        assert self._fai_dir is not None
        try:
            self._fai_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FmauditError(f"--index-dir {self._fai_dir}: cannot create it ({exc})") from None
        if not _dir_writable(self._fai_dir):
            raise FmauditError(f"--index-dir {self._fai_dir}: folder is not writable "
                               "(choose a writable folder)")
        return self._fai_dir

    def _index_paths(self, bgzf: bool) -> tuple[Path, Path | None]:
        if self._fai_dir is not None:
            base = self._checked_fai_dir() / f"{self.fasta_path.name}.{_path_tag(self.fasta_path)}"
        else:
            base = self.fasta_path
        fai = base.with_name(base.name + ".fai")
        return fai, (base.with_name(base.name + ".gzi") if bgzf else None)

    def _decompressed_copy(self, gz: str) -> Path:
        if self._fai_dir is not None:
            folder = self._checked_fai_dir()
        else:
            folder = cache_dir() / "fasta"
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FmauditError(f"{self.path}: cannot create the cache folder {folder} for a "
                                   f"decompressed copy ({exc}) (pass --index-dir DIR)") from None
        self._sha = self._sha or file_sha256(self.path)
        stem = self.path.name.removesuffix(".gz").removesuffix(".bgz")
        target = folder / f"{self._sha[:16]}-{stem}"
        if target.exists():
            return target
        how = ("it is bgzip-compressed but biopython is not installed (pip install biopython)"
               if gz == "bgzf" else "plain gzip has no random access")
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        try:
            with gzip.open(self.path, "rb") as src, open(tmp, "wb") as dst:
                copied = 0
                while chunk := src.read(1 << 20):
                    copied += len(chunk)
                    if copied > GZIP_LIMIT:
                        raise FmauditError(
                            f"{self.path}: {how}, and it is larger than {GZIP_LIMIT >> 20} MiB "
                            "decompressed (recompress it: gunzip FILE.gz && bgzip FILE, "
                            "and pip install biopython; or just gunzip it)")
                    dst.write(chunk)
            os.replace(tmp, target)
        except (OSError, EOFError, zlib.error) as exc:
            raise FmauditError(f"{self.path}: cannot decompress ({exc}) "
                               "(is the file truncated or corrupt?)") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target

    def _ensure_index(self, bgzf: bool) -> tuple[Path, Path | None]:
        """Reuse a fresh index or build one atomically; returns ``(fai, gzi or None)``."""
        import pyfaidx

        fai, gzi = self._index_paths(bgzf)
        if _fresh(fai, self.fasta_path) and (gzi is None or _fresh(gzi, self.fasta_path)):
            return fai, gzi
        if not _dir_writable(fai.parent):
            if not (self._bundled and self._fai_dir is None):
                raise FmauditError(
                    f"{self.path}: cannot create the FASTA index {fai}: the folder is not "
                    "writable (pass --index-dir DIR, or fai_dir=, to keep the index in a "
                    "writable folder)")
            # an installed package folder is read-only: keep the bundled index in the cache
            self._fai_dir = cache_dir() / "index"
            return self._ensure_index(bgzf)
        tag = f".{os.getpid()}.tmp"
        tmp_fai = fai.with_name("." + fai.name + tag)
        tmp_gzi = gzi.with_name("." + gzi.name + tag) if gzi is not None else None
        try:
            faidx = pyfaidx.Faidx(str(self.fasta_path), indexname=str(tmp_fai),
                                  gzi_indexname=str(tmp_gzi) if tmp_gzi else None,
                                  build_index=True, rebuild=True)
            faidx.close()
            if tmp_gzi is not None and gzi is not None:
                os.replace(tmp_gzi, gzi)
            os.replace(tmp_fai, fai)
        except pyfaidx.FastaIndexingError as exc:
            raise FmauditError(f"{self.path}: cannot index this FASTA: {exc} "
                               "(every line of a record but its last must have the same "
                               "length; rewrap it, e.g. `seqkit seq -w 60`)") from None
        except UnicodeDecodeError:
            raise FmauditError(f"{self.path}: contains non-ASCII bytes; not a FASTA file") from None
        except ValueError as exc:  # duplicate record names
            raise FmauditError(f"{self.path}: {exc} (record names must be unique)") from None
        except OSError as exc:
            raise FmauditError(f"{self.path}: cannot write the index {fai} ({exc}) "
                               "(pass --index-dir DIR)") from None
        finally:
            for t in (tmp_fai, tmp_gzi):
                if t is not None:
                    with contextlib.suppress(FileNotFoundError):
                        t.unlink()
        return fai, gzi

    def _open(self, fai: Path, gzi: Path | None):  # -> pyfaidx.Fasta
        import pyfaidx

        try:
            return pyfaidx.Fasta(str(self.fasta_path), indexname=str(fai),
                                 gzi_indexname=str(gzi) if gzi else None, as_raw=True,
                                 rebuild=False, build_index=False, sequence_always_upper=False)
        except ValueError as exc:
            raise FmauditError(f"{self.path}: {exc} (record names must be unique)") from None

    # ------------------------------------------------------------------ records
    def records(self) -> list[tuple[str, int]]:
        """``(name, length)`` of every record, in file order."""
        return list(self._lengths.items())

    def read(self, record: str, start: int, end: int) -> str:
        """Raw sequence characters of ``[start, end)`` (0-based), line breaks removed."""
        return str(self._fasta[record][start:end])

    def close(self) -> None:
        self._fasta.close()

    @property
    def known_sha256(self) -> str | None:
        """The file hash if it was already computed (plain gzip needs it for the cache name)."""
        return self._sha


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of the file bytes, read in ``block``-sized pieces (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()
