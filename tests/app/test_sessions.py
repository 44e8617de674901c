"""The app's session store: bounded in number and size; idle sessions closed, and the user told so;
a session in use never evicted (found: a 17th browser silently evicted one used seconds before)."""

import pytest

from app.sessions import SessionGone, SessionStore


class FakeSession:
    def __init__(self, n_layers=1):
        self.layers = [None] * n_layers


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_full_store_evicts_only_a_session_idle_long_enough_and_says_so():
    clock = Clock()
    store = SessionStore(max_sessions=2, evict_after=300, clock=clock)
    a, b, c = FakeSession(), FakeSession(), FakeSession()
    store.put("a", a)
    clock.now = 10
    store.put("b", b)
    clock.now = 60
    with pytest.raises(ValueError, match="all 2 editing sessions are in use; try again in 4 min"):
        store.put("c", c)
    assert store.get("a") is a and store.get("b") is b  # nobody lost anything
    clock.now = 400  # a (used at 60) and b (used at 60) idle 340 s: the one idle longest goes
    store.get("b")
    store.put("c", c)
    assert store.get("c") is c and store.get("b") is b
    with pytest.raises(SessionGone, match="closed after 6 min idle to make room"):
        store.get("a")
    assert store.get("never-seen") is None


def test_idle_sessions_close_and_the_user_is_told_why():
    clock = Clock()
    store = SessionStore(idle_seconds=60, max_layers=3, clock=clock)
    store.put("old", FakeSession())
    clock.now = 30
    store.put("new", FakeSession())
    clock.now = 61  # old idle 61 s, new 31 s
    assert store.get("new") is not None
    with pytest.raises(SessionGone, match="without use"):
        store.get("old")
    with pytest.raises(ValueError, match="at most 3 layers"):
        store.put("big", FakeSession(4))
    store.drop("new")
    assert store.get("new") is None and len(store) == 0


def test_steady_use_keeps_a_session_alive_past_the_idle_limit():
    """Found (issue 25): a session in steady use was lost after ~32 min; the store counts from last use."""
    clock = Clock()
    store = SessionStore(idle_seconds=30 * 60, clock=clock)
    store.put("k", FakeSession())
    for minute in range(1, 120):
        clock.now = 60 * minute
        assert store.get("k") is not None


def test_a_replaced_scene_is_kept_for_undo_and_redo_and_ends_with_the_session():
    """Guards: a new scene (or New session) silently discarding the one it replaced."""
    clock = Clock()
    store = SessionStore(idle_seconds=60, clock=clock)
    a, b = FakeSession(), FakeSession(2)
    store.replace("k", a)
    assert store.other("k") is None  # nothing was replaced
    store.replace("k", b)
    assert store.get("k") is b and store.other("k") == "back"
    store.swap("k")  # Undo
    assert store.get("k") is a and store.other("k") == "forward"
    store.swap("k")  # Redo
    assert store.get("k") is b and store.other("k") == "back"
    store.swap("k")
    store.forget_forward("k")  # an edit after Undo: the newer scene is gone, as redo history is
    assert store.get("k") is a and store.other("k") is None
    store.replace("k", None)  # New session: a blank page, the scene kept
    assert store.get("k") is None and store.other("k") == "back"
    store.swap("k")
    assert store.get("k") is a and store.other("k") is None
    store.replace("k", None)
    clock.now = 61  # a blank page left idle: its kept scene goes too
    store.get("other")
    assert store.other("k") is None
    store.replace("k", a)
    store.replace("k", b)
    store.drop("k")
    assert store.get("k") is None and store.other("k") is None
