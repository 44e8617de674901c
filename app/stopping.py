"""Stop for a long request: the page's Stop button marks its key, and the request's progress callback
raises `Stopped` at its next step, so the work ends and changes nothing. A key is a page's session key
(the layered tab's gr.State) or Gradio's session hash (`gr.Request.session_hash`) for tabs without one.
"""

from __future__ import annotations

import threading


class Stopped(Exception):
    """The user pressed Stop: the work ends at its next step and changes nothing."""


STOPPED_MESSAGE = "Stopped; nothing was changed."


class StopFlags:
    def __init__(self):
        self._keys: set = set()
        self._lock = threading.Lock()

    def stop(self, key) -> None:
        """Ask the running request of key to stop at its next step."""
        with self._lock:
            self._keys.add(key)

    def clear(self, key) -> None:
        """A new request of key starts: an earlier Stop does not apply to it."""
        with self._lock:
            self._keys.discard(key)

    def check(self, key) -> None:
        """Raise Stopped if Stop was pressed for key since its request started."""
        if key in self._keys:
            raise Stopped()
