"""The app's session store: bounded in number and size, idle sessions cleaned up."""

import time

import pytest

from app.sessions import SessionStore


class FakeSession:
    def __init__(self, n_layers=1):
        self.layers = [None] * n_layers


def test_store_evicts_the_least_recently_used_when_full():
    store = SessionStore(max_sessions=2)
    a, b, c = FakeSession(), FakeSession(), FakeSession()
    store.put("a", a)
    store.put("b", b)
    assert store.get("a") is a  # a is now more recent than b
    store.put("c", c)
    assert len(store) == 2 and store.get("b") is None and store.get("a") is a and store.get("c") is c


def test_store_drops_idle_sessions_and_caps_layers():
    store = SessionStore(idle_seconds=0.05, max_layers=3)
    store.put("old", FakeSession())
    time.sleep(0.1)
    store.put("new", FakeSession())
    assert store.get("old") is None and store.get("new") is not None
    with pytest.raises(ValueError, match="at most 3 layers"):
        store.put("big", FakeSession(4))
    store.drop("new")
    assert store.get("new") is None and len(store) == 0
