"""Reading a JSON file that came from outside: bounded in size, and every failure one error that
names the file (by its name only, never a server path)."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: str | Path, name: str, max_bytes: int, error: type[Exception] = ValueError):
    """The parsed JSON of path, or `error` saying '<name>: no such file / larger than … / not valid JSON'."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{name}: no such file {path.name!r}")
    if path.stat().st_size > max_bytes:
        raise error(f"{name}: larger than {max_bytes >> 10} KiB; not a {name} this program reads")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{name}: not valid JSON ({err})") from None
