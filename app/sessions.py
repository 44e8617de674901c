"""Per-browser editing sessions, bounded in number and size, idle ones cleaned up.

Each browser tab holds only a key (in gr.State); the sessions live here. Generation goes through
one lock per model, because a pipeline's processors and scheduler are shared state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pipelines.layered_edit import LayeredSession


@dataclass
class SessionStore:
    max_sessions: int = 16
    idle_seconds: float = 30 * 60
    max_layers: int = 16
    _sessions: dict = field(default_factory=dict)  # key → (session, last used)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str | None) -> LayeredSession | None:
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return None
            self._sessions[key] = (entry[0], time.monotonic())
            return entry[0]

    def put(self, key: str, session: LayeredSession) -> None:
        if len(session.layers) > self.max_layers:
            raise ValueError(f"layers: a session holds at most {self.max_layers} layers; remove one first")
        with self._lock:
            now = time.monotonic()
            for stale in [k for k, (_, used) in self._sessions.items() if now - used > self.idle_seconds]:
                del self._sessions[stale]
            if key not in self._sessions and len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
                del self._sessions[oldest]
            self._sessions[key] = (session, now)

    def drop(self, key: str | None) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def __len__(self) -> int:
        return len(self._sessions)
