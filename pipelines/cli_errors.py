"""How Strata's command lines end on a user's mistake: one line on stderr naming it, exit code 2, no
traceback (a bad field, a model that does not load, a file that cannot be read or written)."""

from __future__ import annotations

import contextlib
import sys

from pipelines.loading import ModelLoadError


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except (ValueError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"error: could not read or write a file: {err}", file=sys.stderr)
        sys.exit(2)
