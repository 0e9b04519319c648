"""Put a model folder into a Hugging Face Hub cache, laid out as huggingface_hub writes it.

Tests then read it through the real huggingface_hub code path with ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` pointing here: blobs named by content hash, snapshot files linking to them,
``refs/<revision>`` holding the commit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main",
                     commit: str | None = None) -> str:
    """Copy ``folder``'s files into ``cache`` as repo ``repo_id`` at ``revision``; return the
    commit hash (derived from the content unless given)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    digest = hashlib.sha1()
    for p in files:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    commit = commit or digest.hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for p in files:
        data = p.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / p.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snap), link)
    (repo / "refs" / revision).write_text(commit)
    return commit
