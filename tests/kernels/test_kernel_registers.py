"""The region kernel compiles for an H100 (sm_90) without a GPU, in its default and packed launches.

The interpreter runs the kernels' Python; this compiles them for real (in a child process: the test
session sets TRITON_INTERPRET=1), so a kernel the GPU could not build, or a signature the register
benchmark no longer matches, fails here first."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from benchmarks.kernel_registers import CUOBJDUMP  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="Triton without its NVIDIA tools")
def test_region_kernel_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=str(ROOT))
    code = ("import json; from benchmarks.kernel_registers import DEFAULT_LAUNCH, resources; "
            "print(json.dumps([resources(*DEFAULT_LAUNCH, packed=p) for p in (False, True)]))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for usage in json.loads(done.stdout.strip().splitlines()[-1]):
        assert 0 < usage["registers"] <= 255 and usage["local"] == 0, usage
