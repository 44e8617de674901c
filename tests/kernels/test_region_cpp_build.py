"""The fused CPU kernel's build survives being killed, never makes anyone wait for ever, and falls
back to the torch path with the reason shown.

Found: stopping the app while its background thread compiled the kernel left torch's build lock
behind, and from then on every call that needed region attention waited on it with no timeout,
inside the app's generation lock: every user froze."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels import region_cpp

ROOT = Path(__file__).resolve().parent.parent.parent
PROBE = "from kernels import region_cpp; print(region_cpp.available(), region_cpp.unavailable_reason())"


def _env(extensions: Path) -> dict:
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "STRATA_NO_CPU_EXTENSION": ""}


@pytest.mark.skipif(not region_cpp.available(), reason=f"no compiler here: {region_cpp.unavailable_reason()}")
def test_a_build_killed_half_way_leaves_nothing_to_wait_on(tmp_path):
    """Stop a first start mid-compile (the whole process group, as Ctrl-C does), then start again:
    the next process builds afresh and answers within the build's own time, not for ever."""
    first = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=_env(tmp_path), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".build-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(".build-*")), "the build never started"
    time.sleep(3)  # the compiler is running now
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not list(tmp_path.glob("strata_region_cpp_*/*.so")), "killed before it finished"
    start = time.monotonic()
    again = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=region_cpp.BUILD_TIMEOUT + 60)
    assert again.stdout.split()[:2] == ["True", "None"], again.stdout + again.stderr
    assert time.monotonic() - start < region_cpp.BUILD_TIMEOUT
    # a third process imports the finished library without building
    third = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=60)
    assert third.stdout.startswith("True")


def test_a_build_past_its_time_limit_is_stopped_and_the_torch_path_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("STRATA_NO_CPU_EXTENSION", "")
    monkeypatch.setattr(region_cpp, "BUILD_TIMEOUT", 0.5)
    start = time.monotonic()
    module, reason = region_cpp._build()
    assert module is None and "took longer than" in reason
    assert time.monotonic() - start < 30
    assert not list(tmp_path.glob(".build-*"))  # its temporary folder is gone


def test_stale_temporary_folders_are_cleaned_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / f".build-{region_cpp._name()}-1-dead"
    stale.mkdir()
    (stale / "lock").write_text("")  # what a killed torch build leaves
    os.utime(stale, (0, 0))
    fresh = tmp_path / f".build-{region_cpp._name()}-2-live"
    fresh.mkdir()
    region_cpp._clean_stale(tmp_path)
    assert not stale.exists() and fresh.exists()
