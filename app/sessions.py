"""Per-browser editing sessions, bounded in number and size, idle ones cleaned up.

Each browser tab holds only a key (in gr.State); the sessions live here. When the store is full, a
new session takes the place of the one idle longest, but only if it has been idle at least
`evict_after` seconds: sessions in use are never evicted (the newcomer is told to try again), and a
user whose session was evicted is told so, not that it never existed.

A scene replaced by a new one (a new scene, "New session") is not lost: the store keeps the one scene
it replaced beside it (`replace`), and `swap` trades the two, so the app's Undo past a new scene's
first step brings the old one back and Redo returns to the new one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field


class SessionGone(ValueError):
    """The user's session was closed (idle too long, or evicted to make room)."""


@dataclass
class SessionStore:
    max_sessions: int = 16
    idle_seconds: float = 30 * 60
    max_layers: int = 16
    evict_after: float = 5 * 60  # a full store evicts only sessions idle at least this long
    clock: callable = time.monotonic
    _sessions: dict = field(default_factory=dict)  # key → (session, last used)
    _closed: OrderedDict = field(default_factory=OrderedDict)  # key → why, for the last few closed
    _other: dict = field(default_factory=dict)  # key → (scene replaced or undone from, "back"|"forward", when)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str | None):
        """The session for key (and it counts as used now), or None for a key that never had one.
        SessionGone for a key whose session was closed."""
        with self._lock:
            self._expire()
            entry = self._sessions.get(key)
            if entry is None:
                if key in self._closed:
                    raise SessionGone(self._closed[key])
                return None
            self._sessions[key] = (entry[0], self.clock())
            return entry[0]

    def put(self, key: str, session) -> None:
        if len(session.layers) > self.max_layers:
            raise ValueError(f"layers: a session holds at most {self.max_layers} layers; remove one first")
        with self._lock:
            self._expire()
            if key not in self._sessions and len(self._sessions) >= self.max_sessions:
                now = self.clock()
                oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
                idle = now - self._sessions[oldest][1]
                if idle < self.evict_after:
                    raise ValueError(f"server: all {self.max_sessions} editing sessions are in use; try again in "
                                     f"{max(1, round((self.evict_after - idle) / 60))} min")
                self._close(oldest, f"session: closed after {idle / 60:.0f} min idle to make room for another "
                                    f"user; start a new scene, or upload a session you downloaded")
            self._sessions[key] = (session, self.clock())
            self._closed.pop(key, None)

    def replace(self, key: str, session) -> None:
        """Put session (None: no scene) in place of key's scene, keeping the one it replaces for `swap`
        ("back", where Undo finds it). Replacing nothing keeps what was kept before."""
        with self._lock:
            old = self._sessions.get(key, (None,))[0]
        if session is not None:
            self.put(key, session)
        with self._lock:
            if session is None:
                self._sessions.pop(key, None)
            if old is not None:
                self._other[key] = (old, "back", self.clock())

    def other(self, key: str | None) -> str | None:
        """Where the kept scene lies: "back" (Undo brings it), "forward" (Redo does), or None."""
        with self._lock:
            return self._other[key][1] if key in self._other else None

    def swap(self, key: str) -> None:
        """Make the kept scene key's scene, and keep the current one (if any) on the other side."""
        with self._lock:
            kept, side, _ = self._other.pop(key)
            current = self._sessions.pop(key, (None,))[0]
            self._sessions[key] = (kept, self.clock())
            self._closed.pop(key, None)
            if current is not None:
                self._other[key] = (current, "forward" if side == "back" else "back", self.clock())

    def forget_forward(self, key: str | None) -> None:
        """A new edit: a scene Redo could bring back is gone, as redo history is after any edit."""
        with self._lock:
            if key in self._other and self._other[key][1] == "forward":
                del self._other[key]

    def drop(self, key: str | None) -> None:
        with self._lock:
            self._sessions.pop(key, None)
            self._other.pop(key, None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, (_, used) in self._sessions.items() if now - used > self.idle_seconds]:
            self._close(key, f"session: closed after {self.idle_seconds / 60:.0f} min without use; start a new "
                             f"scene, or upload a session you downloaded")
        for key in [k for k, (_, _, kept) in self._other.items()
                    if k not in self._sessions and now - kept > self.idle_seconds]:
            del self._other[key]  # a kept scene of a page left blank ("New session") and then idle

    def _close(self, key, why: str) -> None:
        del self._sessions[key]
        self._other.pop(key, None)
        self._closed[key] = why
        while len(self._closed) > 4 * self.max_sessions:
            self._closed.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)
