"""All-or-nothing folders: write into a temporary folder beside the target, then rename it into place.
A reader (or the next run) sees the old folder or the new one, never half of one; a failure leaves
the target as it was and no temporary folder behind."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import uuid
from pathlib import Path


def replace_folder(new: Path, target: Path) -> None:
    """Put new where target is, by renames only, so target is always the old or the new folder."""
    if not target.exists():
        new.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing_folder(target: str | Path):
    """Yield a fresh temporary folder beside target; when the block ends normally it becomes target
    (replacing an existing one), and when it raises it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
        replace_folder(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks: what done.json and session manifests record."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
