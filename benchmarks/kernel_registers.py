"""Registers and shared memory of the region kernel compiled for an H100 (sm_90), with no GPU.

    python -m benchmarks.kernel_registers [--dtype bf16]

Triton compiles for a named target without a device; cuobjdump (shipped with Triton) reads the
resource usage from the cubin. Occupancy on an H100 follows from the registers: 2-warp programs fit
4 per SM above 170 registers per thread and 6 at or below it (see RESULTS.md, the region kernel's
second wave). The counts depend on the Triton version: the GPU machine's Triton 3.6 gave 254 where
the local 3.9 gives 193 for the default launch, so compare variants within one version only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.common import print_table
from kernels import region

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
DEFAULT_LAUNCH = (64, 32, 32, 16, 2, 1)  # (chunk, block_t, block_d, block_d2, num_warps, num_stages) at head dim 40

# (chunk, block_t, block_d, block_d2, num_warps, num_stages, packed): the default launch at head dim 40,
# then variants, then the default launch on a packed plan (chunks spanning segments)
VARIANTS = [(*DEFAULT_LAUNCH, False), (64, 16, 32, 16, 2, 1, False), (64, 64, 32, 16, 2, 1, False),
            (64, 32, 64, 0, 2, 1, False), (32, 32, 32, 16, 1, 1, False), (64, 32, 32, 16, 4, 1, False),
            (128, 32, 32, 16, 4, 1, False), (*DEFAULT_LAUNCH, True)]


def resources(chunk, block_t, block_d, block_d2, warps, stages, packed=False, dtype="bf16") -> dict:
    pointer = f"*{dtype}"
    signature = {"Q": pointer, "K": pointer, "V": pointer, "O": pointer, "ROWS": "*i64", "SEG": "*i64",
                 "ROW_SEG": "*i64", "SEG_LAST": "*i64", "KD": pointer, "VD": pointer, "KD2": pointer,
                 "VD2": pointer, "scale_log2": "fp32", "H": "i32", "N": "i32", "R": "i32", "T": "i32", "D": "i32"}
    constants = {"CHUNK": chunk, "BLOCK_T": block_t, "BLOCK_D": block_d, "BLOCK_D2": max(16, block_d2),
                 "SPLIT": block_d2 > 0, "USE_DESC": False, "PACKED": packed}
    signature.update({name: "constexpr" for name in constants})
    kernel = triton.compile(ASTSource(region._region_fwd, signature, constants), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        text = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    usage = next(line for line in text.splitlines() if "REG:" in line)
    fields = dict(item.split(":") for item in usage.split() if ":" in item)
    return {"registers": int(fields["REG"]), "shared": int(fields["SHARED"]), "local": int(fields["LOCAL"])}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = [dict(zip(("chunk", "block_t", "block_d", "block_d2", "warps", "stages", "packed"), v),
                 **resources(*v, dtype=args.dtype))
            for v in VARIANTS]
    print_table(f"region kernel for sm_90 (Triton {triton.__version__}, {args.dtype})",
                ["chunk", "block_t", "tiles", "warps", "stages", "packed", "registers", "static shared B",
                 "local (spills) B"],
                [[r["chunk"], r["block_t"], f"{r['block_d']}+{r['block_d2']}", r["warps"], r["stages"], r["packed"],
                  r["registers"], r["shared"], r["local"]] for r in rows])
    return rows


if __name__ == "__main__":
    main()
