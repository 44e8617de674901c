"""What the app writes to disk: one work folder, bounded, emptied as requests finish, and removed
when the server stops; and session zips unpacked with their sizes checked first (no zip bomb).

A request's scratch folder (an unpacked upload) is deleted when the request ends, whether it worked or
not. A file handed to the browser (a download) must outlive the request for Gradio to copy it into its
own cache, so it is kept for `keep_seconds` and then swept, oldest first whenever the folder passes
`max_bytes`.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from pathlib import Path

SESSION_FILES = ("session.json", "memory.safetensors")


class WorkFolder:
    def __init__(self, max_bytes: int = 1 << 30, keep_seconds: float = 600.0):
        self.root = Path(tempfile.mkdtemp(prefix="strata-app-"))
        self.max_bytes = max_bytes
        self.keep_seconds = keep_seconds
        self._kept: list[tuple[float, Path]] = []
        self._lock = threading.Lock()
        atexit.register(shutil.rmtree, self.root, True)

    def _new(self) -> Path:
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    @contextlib.contextmanager
    def scratch(self):
        """A folder for one request's temporary files, deleted when the block ends."""
        folder = self._new()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def keep(self) -> Path:
        """A folder for files handed to the browser: swept after keep_seconds."""
        self.sweep()
        folder = self._new()
        with self._lock:
            self._kept.append((time.monotonic(), folder))
        return folder

    def forget(self, folder: Path) -> None:
        """Delete a kept folder now (its request failed)."""
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._kept = [(t, f) for t, f in self._kept if f != folder]

    def sweep(self) -> None:
        """Delete kept folders older than keep_seconds, then the oldest while the total is too large."""
        now = time.monotonic()
        with self._lock:
            kept = sorted(self._kept)
            while kept and (now - kept[0][0] > self.keep_seconds or self.size() > self.max_bytes):
                shutil.rmtree(kept.pop(0)[1], ignore_errors=True)
            self._kept = kept

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def unpack_session_zip(archive_path, folder: Path, max_bytes: int) -> Path:
    """Unpack a session zip (session.json and memory.safetensors, nothing else) into folder, checking
    the entry names, the declared sizes and the bytes actually written against max_bytes before and
    while extracting. ValueError (naming the zip's problem, never a server path) otherwise."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError):
        raise ValueError("session zip: not a zip file; upload a zip made by 'Download session'") from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        names = sorted(info.filename for info in entries)
        if names != sorted(SESSION_FILES):
            shown = ", ".join(repr(n[:60]) for n in names[:5]) + (" …" if len(names) > 5 else "")
            raise ValueError(f"session zip: expected exactly {' and '.join(SESSION_FILES)}, found {shown or 'nothing'}")
        declared = sum(info.file_size for info in entries)
        if declared > max_bytes:
            raise ValueError(f"session zip: {declared >> 20} MiB unpacked, more than this server takes "
                             f"({max_bytes >> 20} MiB)")
        _extract(archive, entries, folder, min(max_bytes, declared), "session zip",
                 "; upload a zip made by 'Download session'")
    return folder


def _extract(archive: zipfile.ZipFile, entries, folder: Path, limit: int, what: str, hint: str = "") -> None:
    """Write the entries under folder, counting the bytes actually written against limit (the smaller
    of what the headers declare and what the server takes: a header that lied about its size stops
    the unpacking)."""
    written = 0
    try:
        for info in entries:
            target = folder / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                while block := source.read(1 << 20):
                    written += len(block)
                    if written > limit:
                        raise ValueError(f"{what}: unpacks to more than it declares or this server takes")
                    out.write(block)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as err:
        raise ValueError(f"{what}: corrupt ({type(err).__name__}){hint}") from None


DATASET_SUFFIXES = (".json", ".png", ".jpg", ".jpeg")
MAX_DATASET_ENTRIES = 400


def unpack_dataset_zip(archive_path, folder: Path, max_bytes: int) -> Path:
    """Unpack a zipped nerfstudio dataset folder (transforms.json, images, optional depths and controls:
    only .json, .png and .jpg files, relative names without '..', at most MAX_DATASET_ENTRIES) into folder,
    checking declared and written sizes against max_bytes. A zip of one folder is unpacked from inside it.
    Returns the folder holding transforms.json; ValueError (never a server path) otherwise."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError):
        raise ValueError("dataset zip: not a zip file") from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if not entries or len(entries) > MAX_DATASET_ENTRIES:
            raise ValueError(f"dataset zip: expected 1..{MAX_DATASET_ENTRIES} files, found {len(entries)}")
        for info in entries:
            parts = Path(info.filename).parts
            if (info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename
                    or not info.filename.lower().endswith(DATASET_SUFFIXES)):
                raise ValueError(f"dataset zip: {info.filename[:60]!r} is not a dataset file (.json, .png, .jpg "
                                 "inside the folder)")
        declared = sum(info.file_size for info in entries)
        if declared > max_bytes:
            raise ValueError(f"dataset zip: {declared >> 20} MiB unpacked, more than this server takes "
                             f"({max_bytes >> 20} MiB)")
        _extract(archive, entries, folder, min(max_bytes, declared), "dataset zip")
    found = [p.parent for p in folder.rglob("transforms.json") if len(p.relative_to(folder).parts) <= 2]
    if len(found) != 1:
        raise ValueError("dataset zip: expected one transforms.json at the top (or inside one folder)")
    return found[0]
