"""FASTA access through pyfaidx: random access to any stretch without loading the genome.

The ``.fai`` index is built once, atomically (temporary name, then rename), so concurrent
processes never read a half-written index. Plain gzip cannot be read at random offsets: a
plain-gzip FASTA up to ``GZIP_LIMIT`` bytes is decompressed once into the index folder; a larger
one must be recompressed with ``bgzip``. BGZF (bgzip) files are read in place when biopython is
installed (pyfaidx uses it), and otherwise decompressed like plain gzip.

fmaudit writes the ``.fai`` of a plain (or decompressed) FASTA itself (:func:`index_fasta`, the
samtools columns), so that blank lines between records and at the end of the file, which are
common and harmless, are accepted, and a bad line is reported by its number. An index found on
disk is checked against the FASTA before it is trusted (:func:`fai_problem`); a stale or corrupt
one is rebuilt.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fmaudit.errors import FmauditError

GZIP_LIMIT = 256 * 2**20  # decompressed bytes we are willing to copy for a plain-gzip FASTA
SNIFF_BYTES = 1 << 16
_GZ_SUFFIXES = (".gz", ".bgz")  # pyfaidx reads a file with these names as BGZF
_UNSUPPORTED = (".bz2", ".zip", ".xz", ".zst")
FAI_CHECKED_RECORDS = 2000  # records whose bytes an existing index is checked against
_HEADER_PEEK = 1 << 16  # bytes before a record's offset searched for its header line


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
    # sequence lines are ASCII; header lines may name records in UTF-8 (as the indexer takes)
    start = 0
    for line in head.split(b"\n"):
        if not line.startswith(b">"):
            try:
                line.decode("ascii")
            except UnicodeDecodeError as exc:
                raise FmauditError(f"{path}: byte {start + exc.start} is not ASCII; FASTA "
                                   "sequence lines are plain ASCII text (is this a binary or a "
                                   "mis-named file?)") from None
        start += len(line) + 1
    stripped = head.lstrip()
    if not stripped:
        raise FmauditError(f"{path}: the file is empty (only whitespace)")
    if not stripped.startswith(b">"):
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


# ---------------------------------------------------------------------- the .fai index
FaiRow = tuple[str, int, int, int, int]  # name, bases, offset of the first base, bases/line,
# bytes/line (line break included): the samtools .fai columns

_REWRAP = ("every line of a record but its last must have the same length; rewrap it, "
           "e.g. `seqkit seq -w 60`")
_OTHER_BREAK = "ends with another kind of line break than its first line"
_ONE_BREAK = "convert the file to one kind of line break, e.g. `dos2unix FILE`"
_NO_BLANKS = ("blank lines may only come between records or at the end of the file; remove "
              "them, e.g. `sed -i '/^[[:space:]]*$/d' FILE`")


def index_fasta(lines: Iterable[bytes], shown: Path) -> list[FaiRow]:
    """The ``.fai`` rows of FASTA text given as binary lines (line breaks kept).

    Blank lines are allowed before the first header, between records and at the end of the
    file (they lie outside every record's bases, so the index stays exact); anywhere else they
    are an error naming the line, as is a record whose lines are not all as long as its first
    but the last. ``shown`` names the file in the errors.

    Raises:
        FmauditError: the text cannot be indexed (the message names the line and the fix).
    """
    rows: list[FaiRow] = []
    seen: dict[str, int] = {}  # record name -> line of its header
    name: str | None = None
    offset = start = bases = linebases = linewidth = 0
    odd = blank = cut = 0  # line numbers: a line unlike the first, the first blank line, and
    # a full line with a shorter break than the first (it may not precede a header)
    odd_why = odd_fix = ""
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        size = len(line)
        offset += size
        if line[:1] == b">":
            if cut:
                # pyfaidx reads the first line's break length after a full last line: the byte
                # too many would be this header's '>'
                raise FmauditError(f"{shown}: cannot index this FASTA: line {cut:,} of record "
                                   f"{name!r} {_OTHER_BREAK} ({_ONE_BREAK})")
            if name is not None:
                rows.append((name, bases, start, linebases, linewidth))
            name = _record_name(line, lineno, shown)
            if name in seen:
                raise FmauditError(f"{shown}: record name {name!r} appears twice (lines "
                                   f"{seen[name]:,} and {lineno:,}) (record names must be "
                                   "unique; only the first word of a header line counts)")
            seen[name] = lineno
            start, bases, linebases, linewidth, odd, blank = offset, 0, 0, 0, 0, 0
            continue
        body = line.rstrip(b"\r\n")
        if not body or body.isspace():
            blank = blank or lineno
            if line[:1] in (b"\n", b"\r"):
                cut = 0  # the byte pyfaidx reads too many is a line break: harmless
            continue
        if name is None:
            if body[:1] == b";":  # old-style comment before the first record (pyfaidx skips it)
                continue
            raise FmauditError(f"{shown}: not a FASTA file: line {lineno:,} comes before the "
                               "first '>' header line")
        if blank:
            raise FmauditError(f"{shown}: cannot index this FASTA: line {blank:,} is blank, "
                               f"inside record {name!r} ({_NO_BLANKS})")
        if odd:
            raise FmauditError(f"{shown}: cannot index this FASTA: line {odd:,} of record "
                               f"{name!r} {odd_why} but is not its last ({odd_fix})")
        if not body.isascii():
            raise FmauditError(f"{shown}: line {lineno:,} contains non-ASCII bytes; not a "
                               "FASTA file")
        n = len(body)
        if not linewidth:
            linebases, linewidth = n, size
        elif n > linebases:
            raise FmauditError(f"{shown}: cannot index this FASTA: line {lineno:,} of record "
                               f"{name!r} is longer than its first line ({_REWRAP})")
        elif n < linebases or size == n:  # only the last line may be short or lack a break
            odd, odd_why, odd_fix = lineno, "is shorter than its first line", _REWRAP
        elif size != linewidth:  # ditto for another kind of line break
            odd, odd_why, odd_fix = lineno, _OTHER_BREAK, _ONE_BREAK
            cut = lineno if size < linewidth else 0
        bases += n
    if name is None:
        raise FmauditError(f"{shown}: not a FASTA file: no '>' header line in {lineno:,} lines")
    rows.append((name, bases, start, linebases, linewidth))
    return rows


def _record_name(line: bytes, lineno: int, shown: Path) -> str:
    words = line[1:].split(None, 1)
    if not words:
        raise FmauditError(f"{shown}: line {lineno:,}: a '>' header line without a record "
                           "name (give every record a name)")
    try:
        return words[0].decode("utf-8")
    except UnicodeDecodeError:
        raise FmauditError(f"{shown}: line {lineno:,}: the record name is not UTF-8 text; "
                           "not a FASTA file") from None


def write_fai(rows: list[FaiRow], target: Path) -> None:
    with open(target, "w", encoding="utf-8") as fh:
        fh.writelines(f"{n}\t{b}\t{o}\t{lb}\t{lw}\n" for n, b, o, lb, lw in rows)


def read_fai(fai: Path) -> list[FaiRow]:
    """Parse a ``.fai`` (5 tab-separated columns per line).

    Raises:
        ValueError: a malformed line (the message says which and why).
    """
    rows: list[FaiRow] = []
    names: set[str] = set()
    with open(fai, "rb") as fh:
        lines = fh.read().decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line break
    for i, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"line {i} has {len(fields)} tab-separated fields, not 5")
        name = fields[0]
        try:
            bases, offset, linebases, linewidth = (int(f) for f in fields[1:])
        except ValueError:
            raise ValueError(f"line {i} holds a non-integer column") from None
        if min(bases, offset, linebases, linewidth) < 0 or linewidth < linebases or (
                bases and not linebases) or not name:
            raise ValueError(f"line {i} ({name!r}) holds impossible numbers")
        if name in names:
            raise ValueError(f"record {name!r} is listed twice")
        names.add(name)
        rows.append((name, bases, offset, linebases, linewidth))
    if not rows:
        raise ValueError("it lists no record")
    return rows


def fai_problem(fai: Path, fasta: Path, *, check_bytes: bool = True) -> str | None:
    """Why an existing ``.fai`` cannot be trusted for ``fasta``, or None when it can.

    Cheap: every row is parsed and must fit the file size in file order; for up to
    ``FAI_CHECKED_RECORDS`` records spread over the file, the header line before the record
    must name it, and line breaks must sit where the row says; after the last record only
    whitespace may follow (an index cut short at a line boundary, or a file that grew under
    an index with the same date, would otherwise hide records or bases). ``check_bytes=False``
    (a bgzip file read in place, whose offsets are in the decompressed stream) checks the
    format only.
    """
    try:
        rows = read_fai(fai)
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({exc})"
    except ValueError as exc:
        return f"malformed: {exc}"
    if not check_bytes:
        return None
    size = fasta.stat().st_size
    previous_end = 0
    for name, bases, offset, linebases, linewidth in rows:
        end = _base_end(bases, offset, linebases, linewidth)
        if offset < previous_end or end > size:
            return (f"record {name!r} at bytes {offset:,}-{end:,} does not fit the file "
                    f"({size:,} bytes) after the record before it")
        previous_end = end
    step = max(1, len(rows) // FAI_CHECKED_RECORDS)
    sample = [*rows[::step], rows[-1]]
    with open(fasta, "rb") as fh:
        for row in sample:
            problem = _row_problem(fh, row)
            if problem:
                return problem
        return _tail_problem(fh, rows[-1][0], previous_end)


def _tail_problem(fh: BinaryIO, name: str, end: int) -> str | None:
    """Whether anything but whitespace follows the last indexed record's last base."""
    fh.seek(end)
    while chunk := fh.read(1 << 16):
        if chunk.strip():
            return (f"the file goes on after record {name!r} ends at byte {end:,} (a record "
                    "added or lengthened since the index was written)")
    return None


def _base_end(bases: int, offset: int, linebases: int, linewidth: int) -> int:
    """Byte offset just after the record's last base."""
    if not bases:
        return offset
    last = bases - 1
    return offset + (last // linebases) * linewidth + last % linebases + 1


def _row_problem(fh: BinaryIO, row: FaiRow) -> str | None:
    """Whether the bytes around one record are where its index row says."""
    name, bases, offset, linebases, linewidth = row
    fh.seek(max(0, offset - _HEADER_PEEK))
    before = fh.read(min(offset, _HEADER_PEEK))
    if not before.endswith(b"\n"):
        return f"record {name!r} does not start at the beginning of a line (byte {offset:,})"
    cut = before.rfind(b"\n", 0, len(before) - 1)
    if cut >= 0 or len(before) == offset:  # the whole header line is in view
        words = before[cut + 1:].rstrip(b"\r\n")[1:].split(None, 1)
        if before[cut + 1:cut + 2] != b">" or not words or words[0] != name.encode():
            return f"the line before record {name!r} (byte {offset:,}) is not its header"
    if not bases:
        return None
    if bases > linebases:  # the first line's break
        fh.seek(offset + linebases)
        brk = fh.read(linewidth - linebases)
        if not brk.endswith(b"\n") or brk.strip(b"\r\n"):
            return f"record {name!r}: no line break after {linebases} bases at byte " \
                f"{offset + linebases:,}"
    end = _base_end(bases, offset, linebases, linewidth)
    fh.seek(end - 1)
    tail = fh.read(2)
    if tail[:1] in (b"\n", b"\r", b">") or (len(tail) == 2 and tail[1:] not in (b"\n", b"\r")):
        return f"record {name!r} does not end with its {bases:,}th base at byte {end:,}"
    return None


def _check_suffix(path: Path, gz: str | None) -> None:
    """pyfaidx picks its reader from the file name: refuse names that would mislead it."""
    lower = path.name.lower()
    for suffix in _UNSUPPORTED:
        if lower.endswith(suffix):
            raise FmauditError(f"{path}: {suffix} files are not supported (give a plain, gzip "
                               "or bgzip-compressed FASTA)")
    if gz is None:
        for suffix in _GZ_SUFFIXES:
            if lower.endswith(suffix):
                raise FmauditError(f"{path}: named {suffix} but not gzip-compressed (rename it "
                                   f"without {suffix}, or compress it: bgzip FILE)")


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
        _check_suffix(path, gz)
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
        """Reuse a fresh, consistent index or build one atomically; returns ``(fai, gzi)``."""
        fai, gzi = self._index_paths(bgzf)
        problem = None
        if _fresh(fai, self.fasta_path) and (gzi is None or _fresh(gzi, self.fasta_path)):
            # a fresh date is not enough: the index may belong to another file, or be damaged
            problem = fai_problem(fai, self.fasta_path, check_bytes=not bgzf)
            if problem is None:
                return fai, gzi
        if not _dir_writable(fai.parent):
            if not (self._bundled and self._fai_dir is None):
                found = f"the index {fai} does not match it ({problem}) and " if problem else \
                    f"cannot create the FASTA index {fai}: "
                raise FmauditError(
                    f"{self.path}: {found}the folder is not writable (pass --index-dir DIR, "
                    "or fai_dir=, to keep the index in a writable folder)")
            # an installed package folder is read-only: keep the bundled index in the cache
            self._fai_dir = cache_dir() / "index"
            return self._ensure_index(bgzf)
        if problem:
            from fmaudit import progress

            progress.warn(f"{self.path}: the index {fai} does not match the FASTA ({problem}); "
                          "rebuilding it")
        tag = f".{os.getpid()}.tmp"
        tmp_fai = fai.with_name("." + fai.name + tag)
        tmp_gzi = gzi.with_name("." + gzi.name + tag) if gzi is not None else None
        try:
            if bgzf:
                self._pyfaidx_index(tmp_fai, tmp_gzi)
            else:
                with open(self.fasta_path, "rb") as fh:
                    write_fai(index_fasta(fh, self.path), tmp_fai)
            if tmp_gzi is not None and gzi is not None:
                os.replace(tmp_gzi, gzi)
            os.replace(tmp_fai, fai)
        except OSError as exc:
            raise FmauditError(f"{self.path}: cannot build the index {fai} ({exc}) "
                               "(pass --index-dir DIR if its folder is not writable)") from None
        finally:
            for t in (tmp_fai, tmp_gzi):
                if t is not None:
                    with contextlib.suppress(FileNotFoundError):
                        t.unlink()
        return fai, gzi

    def _pyfaidx_index(self, tmp_fai: Path, tmp_gzi: Path | None) -> None:
        """A bgzip file read in place: pyfaidx writes both the .fai and the .gzi."""
        import pyfaidx

        try:
            faidx = pyfaidx.Faidx(str(self.fasta_path), indexname=str(tmp_fai),
                                  gzi_indexname=str(tmp_gzi) if tmp_gzi else None,
                                  build_index=True, rebuild=True)
            faidx.close()
        except ImportError as exc:  # an old biopython: pyfaidx needs >= 1.73
            raise FmauditError(f"{self.path}: {exc} (pip install 'biopython>=1.73', or gunzip "
                               "the file)") from None
        except (pyfaidx.FastaIndexingError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
            # our own reader names the bad line; pyfaidx alone refuses more (trailing blanks)
            with contextlib.suppress(OSError, EOFError, zlib.error), \
                    gzip.open(self.fasta_path, "rb") as fh:
                index_fasta(fh, self.path)
            raise FmauditError(f"{self.path}: cannot index this bgzip-compressed FASTA ({exc}) "
                               "(remove blank lines at the end of records and of the file, "
                               "or gunzip it)") from None

    def _open(self, fai: Path, gzi: Path | None):  # -> pyfaidx.Fasta
        import pyfaidx

        try:
            return pyfaidx.Fasta(str(self.fasta_path), indexname=str(fai),
                                 gzi_indexname=str(gzi) if gzi else None, as_raw=True,
                                 rebuild=False, build_index=False, sequence_always_upper=False)
        except ValueError as exc:  # the index was checked: only a change under us gets here
            raise FmauditError(f"{self.path}: cannot read the index {fai} ({exc}); was the "
                               "file modified during the run?") from None

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


_SHA_CACHE: dict[tuple, str] = {}  # (path, size, mtime, inode, ctime) -> sha256, this process


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of the file bytes, read in ``block``-sized pieces (bounded memory); a file
    unchanged since this process hashed it (same size, times and inode) is not read again (a
    genome opened twice, e.g. whole and then with its training options, costs one pass)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]
