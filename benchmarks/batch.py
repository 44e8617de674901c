"""The batch runner's throughput and overhead on this machine.

    python -m benchmarks.batch --jobs 12 --json out.json

Jobs: layered-edit scripts of world scenes 0..N−1 (`world.jobs`, the embedded model, 20 steps). Three
runs, each a fresh process (imports and the model load included), one CPU thread per process:
  plain loop        load the pipeline once and run every script in a loop (`run_script`), no runner
  batch, 1 process  python -m pipelines.batch --jobs …
  batch, 2 processes torchrun --nproc_per_node 2 -m pipelines.batch --jobs …
Prints jobs per minute of each, the 2-process / 1-process ratio, and the runner's overhead: its
1-process wall time / the plain loop's − 1 (done.json with every output's sha256, the temporary folder
and rename, the manifest; goal ≤ 5 %). Outputs are checked: both batch runs hold the same files,
bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, print_table, write_json
from world.jobs import write_jobs

ROOT = Path(__file__).resolve().parent.parent
PLAIN = """
import json, sys, time, torch
from pathlib import Path
torch.set_num_threads(1)
from pipelines.layered_edit import LayeredEditPipeline
from pipelines.layered_edit.cli import load_script, run_script
from pipelines.loading import load_pipeline
jobs, out = Path(sys.argv[1]), Path(sys.argv[2])
pipe = load_pipeline("embedded", LayeredEditPipeline)
pipe.set_progress_bar_config(disable=True)
for line in jobs.read_text().splitlines():
    job = json.loads(line)
    script = out / (job["id"] + ".json")
    script.write_text(json.dumps(job["script"]))
    folder = out / job["id"]
    folder.mkdir()
    run_script(load_script(script, base=jobs.parent), pipe, folder, seed_offset=job["seed"])
"""


def _timed(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="strata-batch-bench-"))
    jobs = write_jobs(range(args.jobs), "layered_edit", work / "jobs")
    batch = [sys.executable, "-m", "pipelines.batch", "--jobs", str(jobs), "--threads", "1"]
    (work / "plain").mkdir()
    runs = {"plain loop": [sys.executable, "-c", PLAIN, str(jobs), str(work / "plain")],
            "batch, 1 process": batch + ["--out", str(work / "one")],
            "batch, 2 processes": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   *batch[1:], "--out", str(work / "two")]}
    seconds = {name: _timed(command) for name, command in runs.items()}
    outputs = [{p.parent.name: json.loads(p.read_text())["outputs"] for p in (work / name).glob("*/done.json")}
               for name in ("one", "two")]
    identical = outputs[0] == outputs[1] and len(outputs[0]) == args.jobs
    shares = [sum(json.loads(p.read_text())["process"] == k for p in (work / "two").glob("*/done.json")) for k in (0, 1)]
    per_minute = {name: 60 * args.jobs / s for name, s in seconds.items()}
    result = {"machine": machine(), "jobs": args.jobs, "seconds": seconds, "jobs_per_minute": per_minute,
              "two_over_one": per_minute["batch, 2 processes"] / per_minute["batch, 1 process"],
              "runner_overhead": seconds["batch, 1 process"] / seconds["plain loop"] - 1,
              "outputs_identical": identical, "jobs_per_process_of_two": shares}
    print_table(f"Batch of {args.jobs} layered-edit jobs (embedded model, 1 thread per process), {machine()}",
                ["run", "wall s", "jobs / min"], [[name, seconds[name], per_minute[name]] for name in runs])
    print(f"2 processes / 1 process: {result['two_over_one']:.2f}×; the runner's overhead against a plain loop: "
          f"{100 * result['runner_overhead']:+.1f} %; outputs of the two batch runs identical: {identical}; jobs per "
          f"process of the 2-process run: {shares}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
