"""Region cross-attention on the CPU as one fused C++ loop (`kernels/csrc/region_cpp.cpp`).

Per (segment, block of up to `BLOCK` of its query rows, head): gather the rows, attend to the
segment's T keys read in place (BLAS products, a vectorized softmax), write the rows back. Unlike the
torch path (SDPA over chunks of same-region rows), nothing is padded and no K/V is copied, and its
products are as large as one plain cross-attention's: PyTorch's CPU flash kernel takes small query
blocks for short sequences, which is what kept the torch path at 1.3–1.4× a plain cross-attention.

The extension is compiled on first use with `torch.utils.cpp_extension` (a C++ compiler and ninja;
about 30 s) in a child process with a time limit, into a fresh temporary folder that is renamed into
place when the build is done (`<TORCH_EXTENSIONS_DIR>/strata_region_cpp_<cpu>_<source hash>/`), and
later processes import the finished library directly. So a build that is killed half-way leaves only a
temporary folder behind (cleaned up later) and no lock for anyone to wait on, and no caller ever waits
longer than the time limit. Where it cannot be built or loaded, `available()` is False,
`unavailable_reason()` says why, and the dispatcher keeps the torch path. float32 only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import torch

from kernels.region import RegionPlan, _check, make_plan

BLOCK = 256  # query rows per product: 64–512 measured alike (benchmarks/RESULTS.md); 256 keeps a block in L2
SOURCE = Path(__file__).parent / "csrc" / "region_cpp.cpp"
BUILD_TIMEOUT = 600.0  # seconds for one build (about 30 s on a 2-core machine); past it the torch path runs
STALE_BUILD = 2 * BUILD_TIMEOUT  # a temporary build folder older than this belongs to no live build
_CAPABILITY_FLAGS = {  # ATen's vector types follow CPU_CAPABILITY; the flags let the compiler emit them
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
_lock = threading.Lock()
_state: dict = {}  # "module" (None where it cannot be built) and "reason", once tried


def _name() -> str:
    return f"strata_region_cpp_{torch.backends.cpu.get_cpu_capability().lower()}"


def build_folder() -> Path:
    """Where the finished library lives: one folder per CPU capability and source version."""
    from torch.utils.cpp_extension import get_default_build_root
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / f"{_name()}_{digest}"


def _compile(folder: Path) -> None:
    """Build the extension into folder (run in the child process)."""
    from torch.utils.cpp_extension import load
    flags = ["-O3", "-fopenmp", *_CAPABILITY_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]
    load(_name(), [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(folder),
         verbose=False)


def _import(folder: Path):
    library = folder / f"{_name()}.so"
    spec = importlib.util.spec_from_file_location(_name(), library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clean_stale(root: Path) -> None:
    for old in root.glob(f".build-{_name()}-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_BUILD:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _build():
    if os.environ.get("STRATA_NO_CPU_EXTENSION"):
        return None, "STRATA_NO_CPU_EXTENSION is set"
    try:
        final = build_folder()
        if not (final / f"{_name()}.so").is_file():
            final.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale(final.parent)
            partial = final.parent / f".build-{_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            partial.mkdir()
            try:
                returncode, stderr = _run_build(partial)
                if returncode != 0:
                    lines = stderr.strip().splitlines()
                    return None, f"the build failed: {lines[-1][:200] if lines else returncode}"
                try:
                    partial.rename(final)
                except OSError:  # another process finished first: use its build
                    pass
            except subprocess.TimeoutExpired:
                return None, f"the build took longer than {BUILD_TIMEOUT:.0f} s and was stopped"
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return _import(final), None
    except Exception as exc:  # no compiler, no ninja, no BLAS symbol: the torch path serves instead
        lines = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def _run_build(folder: Path) -> tuple[int, str]:
    """The build in a child process (its own process group, so a timeout stops the compiler too)."""
    child = subprocess.Popen([sys.executable, "-m", "kernels.region_cpp", str(folder)],
                             cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = child.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise
    return child.returncode, stderr


def _extension():
    # One build per process, whichever thread asks first (the app starts it in the background); a
    # caller waits at most the build's own time limit.
    if not _lock.acquire(timeout=BUILD_TIMEOUT + 30):
        return None
    try:
        if "module" not in _state:
            _state["module"], _state["reason"] = _build()
        return _state["module"]
    finally:
        _lock.release()


def available() -> bool:
    """True when the extension is built (building it now if it was not: ~30 s the first time)."""
    return _extension() is not None


def unavailable_reason() -> str | None:
    """Why the extension could not be built or loaded (None when it is available)."""
    if available():
        return None
    return _state.get("reason", "another thread's build has not finished in time")


def cpp_path(q, k, v, region, segment_length: int, scale=None, plan: RegionPlan | None = None,
             block: int = BLOCK):
    """Same contract as `kernels.region.reference` (q (B, H, N, D), k/v (B, H, R·T, D), region (N,) or
    (B, N), -1 → a zero row); float32 CPU tensors. The output keeps q's layout (token-major q, as
    attention processors pass it, gives token-major output). plan: a cached `make_plan` (its token
    order and segment offsets are used; chunk size and packing do not matter here)."""
    n_regions = _check(q, k, region, segment_length)
    if q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype != torch.float32 or v.dtype != torch.float32:
        raise ValueError(f"region cpp path: float32 CPU tensors only, got {q.dtype} on {q.device}")
    ext = _extension()
    if ext is None:
        raise RuntimeError(f"region cpp path: the C++ extension is unavailable ({unavailable_reason()}); "
                           "use the torch path")
    b, _, n, d = q.shape
    plan = plan or make_plan(region, b, n_regions)
    if plan.batch != b or plan.tokens != n or plan.n_regions != n_regions:
        raise ValueError(f"plan: built for batch {plan.batch}, {plan.tokens} tokens, {plan.n_regions} regions; "
                         f"the call has {b}, {n}, {n_regions}")
    # BLAS reads keys and values as matrices: unit stride in D, and rows at least D apart
    q, k, v = (x if x.stride(-1) == 1 and x.stride(-2) >= d else x.contiguous() for x in (q, k, v))
    return ext.region_forward(q, k, v, plan.order, plan.segment_offsets, segment_length,
                              d ** -0.5 if scale is None else float(scale), block)


if __name__ == "__main__":  # the build's child process: python -m kernels.region_cpp FOLDER
    _compile(Path(sys.argv[1]))
