"""Scripted batch generation: one command from one CPU to a cluster, resumable, a bad job never stops the batch.

    python -m pipelines.batch --jobs jobs.jsonl --out DIR                 one process
    torchrun --nproc_per_node 2 -m pipelines.batch --jobs jobs.jsonl --out DIR       2 processes on a CPU
    accelerate launch --num_processes 8 -m pipelines.batch --jobs jobs.jsonl --out DIR   8 GPUs
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --main_process_port 29500 \\
        --num_processes 16 -m pipelines.batch --jobs jobs.jsonl --out /shared/DIR         several machines

On a machine without GPUs, `accelerate launch --cpu --num_processes N` starts one process (accelerate runs
several CPU processes only through mpirun); torchrun (`python -m torch.distributed.run`) starts N, and
the runner's `PartialState` joins them over gloo.
    python -m pipelines.batch --from-seeds 0:12 --kind layered_edit --out DIR        jobs from world scenes

A job is one line of JSON: {"id": "…", "kind": "layered_edit", "seed": 7, …} with the kind's own
arguments (files relative to the jobs file):
  layered_edit: "script", an edit script file (the format of `pipelines.layered_edit.load_script`) or
    the script's object inline;
  multiview_edit: "dataset" (a nerfstudio folder made by Strata) or "scene_seed" (an orbit scene), "edit"
    (the edit object of `python -m pipelines.multiview_edit`, or a file), optional "method" (blend, the
    default; guidance, independent, extended), "views", "interval", "fit_seconds"; writes the edited
    dataset folder;
  driving_video: "layout" (a layout JSON file) or "scene_seed" (a street clip), optional "frames",
    "prompt", "local" ({class: prompt}), "window"; writes the cameras' mp4s, the mosaic and the frames.
Every kind takes "steps" (or --steps for all).

accelerate splits the jobs between processes (`PartialState.split_between_processes`); each process
loads the model once. Each job runs in a temporary folder that is renamed to DIR/<id> when it has
finished, with a done.json (arguments, seed, versions, seconds, every output file with its sha256): a
rerun skips jobs that have one, and a killed batch leaves no partial folder that looks finished. A job
that raises goes to failed.jsonl with its error; a malformed line is reported with its line number.
The main process shows one progress bar over all jobs and, at the end, writes manifest.jsonl (every
job's state) and prints a summary. Results do not depend on the process count: each job seeds its own
generators, and every process computes with --threads CPU threads (default 1; the same threads give
the same bits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipelines.atomic import sha256_file

KINDS = ("layered_edit", "multiview_edit", "driving_video")
BUILT = KINDS
MAX_JOBS_BYTES = 64 << 20
TMP_PREFIX = ".tmp-"


class JobError(ValueError):
    """A job that cannot run as written (a bad line, an unknown kind, a missing file)."""


@dataclass
class Job:
    id: str
    kind: str
    seed: int
    args: dict = field(default_factory=dict)
    line: int = 0


def parse_jobs(path: Path) -> tuple[list[Job], list[dict]]:
    """(jobs, failures): every line of a JSON-lines file; a malformed line becomes a failure naming its
    line number, and the others still run. Ids must be unique and usable as folder names."""
    if not path.is_file():
        raise JobError(f"jobs: no such file {str(path)!r}")
    if path.stat().st_size > MAX_JOBS_BYTES:
        raise JobError(f"jobs: larger than {MAX_JOBS_BYTES >> 20} MiB")
    jobs, failures, seen = [], [], set()
    try:  # bytes, not text mode (which turns a lone "\r" into a line end)
        content = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise JobError(f"jobs: not UTF-8 text ({err})") from None
    # JSON lines end at "\n" only (str.splitlines would also split at \x1c–\x1e, \u2028, …)
    for number, text in enumerate(content.split("\n"), start=1):
        if not text.strip():
            continue
        try:
            job = _job(json.loads(text), number)
            if job.id in seen:
                raise JobError(f"line {number}: id {job.id!r} is used twice")
            seen.add(job.id)
            jobs.append(job)
        except (json.JSONDecodeError, JobError) as err:
            message = f"line {number}: not valid JSON ({err})" if isinstance(err, json.JSONDecodeError) else str(err)
            failures.append({"id": f"line-{number}", "line": number, "error": message})
    return jobs, failures


def _job(data, line: int) -> Job:
    if not isinstance(data, dict):
        raise JobError(f"line {line}: expected an object, got {type(data).__name__}")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id or job_id.startswith(".") or "/" in job_id or "\\" in job_id \
            or len(job_id) > 120:
        raise JobError(f"line {line}.id: expected a name for the job's folder (no '/', not starting with '.'), "
                       f"got {job_id!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise JobError(f"line {line}.kind: expected one of {KINDS}, got {kind!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise JobError(f"line {line}.seed: expected an integer in 0..2^63 − 1, got {seed!r}")
    return Job(job_id, kind, seed, {k: v for k, v in data.items() if k not in ("id", "kind", "seed")}, line)


def versions() -> dict:
    import diffusers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


class Runner:
    """Runs jobs of every built kind in one process, with the model loaded once."""

    def __init__(self, model: str, device, base: Path, steps: int | None = None, controlnet: str = "embedded"):
        self.model, self.device, self.base, self.steps, self.controlnet = model, device, base, steps, controlnet
        self._pipes = {}

    def pipe(self, kind: str = "layered_edit"):
        """The kind's pipeline, loaded once per process (the ControlNet kinds share one ControlNet)."""
        if kind not in self._pipes:
            from pipelines.loading import load_controlnet, load_pipeline
            if kind == "layered_edit":
                from pipelines.layered_edit import LayeredEditPipeline
                self._pipes[kind] = load_pipeline(self.model, LayeredEditPipeline, device=self.device)
            else:
                if kind == "driving_video":
                    from pipelines.driving_video import DrivingVideoPipeline as cls
                else:
                    from pipelines.multiview_edit import MultiViewEditPipeline as cls
                if "controlnet" not in self._pipes:
                    self._pipes["controlnet"] = load_controlnet(self.controlnet)
                self._pipes[kind] = load_pipeline(self.model, cls, device=self.device,
                                                  controlnet=self._pipes["controlnet"])
            self._pipes[kind].set_progress_bar_config(disable=True)
        return self._pipes[kind]

    def run(self, job: Job, folder: Path) -> None:
        if job.kind not in BUILT:
            raise JobError(f"kind {job.kind!r}: not built in this version of Strata yet")
        getattr(self, job.kind)(job, folder)

    def _steps(self, job: Job, default: int) -> int:
        steps = self.steps if self.steps is not None else job.args.get("steps", default)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise JobError(f"{job.id}.steps: expected a whole number in 1..1000, got {steps!r}")
        return steps

    def _scene_seed(self, job: Job) -> int:
        seed = job.args.get("scene_seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise JobError(f"{job.id}.scene_seed: expected a whole number ≥ 0, got {seed!r}")
        return seed

    def driving_video(self, job: Job, folder: Path) -> None:
        from formats.layout import StreetClip
        from pipelines.driving_video import write_video

        if "layout" in job.args:
            if not isinstance(job.args["layout"], str):
                raise JobError(f"{job.id}.layout: expected a layout JSON file")
            clip = StreetClip.load(self.base / job.args["layout"])
        else:
            from world.street import sample_street_clip  # a job from a world scene (--from-seeds)
            clip = sample_street_clip(self._scene_seed(job), n_frames=int(job.args.get("frames", 4)))
        frames = job.args.get("frames", len(clip.frames))
        local = job.args.get("local")
        result = self.pipe("driving_video")(clip, job.args.get("prompt", "a street view"), local, num_frames=frames,
                                            window=job.args.get("window", 4), num_inference_steps=self._steps(job, 10),
                                            generator=torch.Generator().manual_seed(job.seed))
        write_video(result.frames, result.camera_names, clip, folder / "video")

    def multiview_edit(self, job: Job, folder: Path) -> None:
        from types import SimpleNamespace

        from pipelines.multiview_edit import write_views
        from pipelines.multiview_edit.cli import METHODS, grid_png, prepare
        from qnerf import FitSettings

        edit = job.args.get("edit")
        if isinstance(edit, dict):
            (folder / "edit.json").write_text(json.dumps(edit))
            edit = folder / "edit.json"
        elif isinstance(edit, str):
            edit = self.base / edit
        else:
            raise JobError(f"{job.id}.edit: expected an edit object or file, got {edit!r}")
        method = job.args.get("method", "blend")
        if method not in METHODS:
            raise JobError(f"{job.id}.method: expected one of {sorted(METHODS)}, got {method!r}")
        dataset = job.args.get("dataset")
        args = SimpleNamespace(edit=edit, scene_seed=None if dataset else self._scene_seed(job),
                               dataset=self.base / dataset if isinstance(dataset, str) else None, controls=None,
                               prompt=None, source_prompt=None, views=int(job.args.get("views", 8)))
        inputs, extra = prepare(args, channels=4)
        out = self.pipe("multiview_edit")(**inputs, num_inference_steps=self._steps(job, 20),
                                          interval=int(job.args.get("interval", 5)),
                                          fit_settings=FitSettings(max_seconds=float(job.args.get("fit_seconds", 10))),
                                          generator=torch.Generator().manual_seed(job.seed), **METHODS[method])
        write_views(folder / "edited", out.images, inputs["cameras"], extra=extra,
                    files={"grid.png": grid_png(inputs["images"], out.images)})

    def layered_edit(self, job: Job, folder: Path) -> None:
        from pipelines.layered_edit.cli import load_script, run_script

        script = job.args.get("script")
        if isinstance(script, dict):  # inline: its paths are relative to the jobs file
            inline = folder / "script.json"
            inline.write_text(json.dumps(script))
            parsed = load_script(inline, base=self.base)
        elif isinstance(script, str):
            parsed = load_script(self.base / script)
        else:
            raise JobError(f"{job.id}.script: expected an edit script file or object, got {script!r}")
        if self.steps is not None:
            from dataclasses import replace
            parsed.settings = replace(parsed.settings, steps=self.steps)
        run_script(parsed, self.pipe(), folder, seed_offset=job.seed)


def finish(job: Job, folder: Path, target: Path, seconds: float, process: int = 0) -> None:
    """done.json (arguments, seed, versions, seconds, the process that ran it, outputs with their sha256),
    then the rename."""
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    done = {"id": job.id, "kind": job.kind, "seed": job.seed, "args": job.args, "seconds": seconds,
            "process": process, "versions": versions(), "outputs": files}
    (folder / "done.json").write_text(json.dumps(done, indent=1))
    if target.exists():  # an unfinished earlier attempt's folder (no done.json): replaced
        shutil.rmtree(target)
    folder.rename(target)


def run_batch(jobs: list[Job], out: Path, runner: Runner, state, on_done=None) -> dict:
    """This process's share of jobs (split by accelerate). Returns its counts and per-job seconds."""
    stats = {"done": 0, "skipped": 0, "failed": 0, "seconds": []}
    failed_path = out / f"failed.{state.process_index}.jsonl"
    with state.split_between_processes(jobs) as mine:
        for job in mine:
            target = out / job.id
            if (target / "done.json").is_file():
                stats["skipped"] += 1
            else:
                folder = out / f"{TMP_PREFIX}{job.id}-{os.getpid()}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                start = time.perf_counter()
                try:
                    runner.run(job, folder)
                    finish(job, folder, target, time.perf_counter() - start, state.process_index)
                    stats["done"] += 1
                    stats["seconds"].append(time.perf_counter() - start)
                except Exception as err:  # the batch goes on; the error is on record
                    stats["failed"] += 1
                    record = {"id": job.id, "line": job.line, "kind": job.kind, "error": f"{type(err).__name__}: {err}"}
                    if not isinstance(err, (JobError, ValueError)):
                        record["traceback"] = traceback.format_exc(limit=5)
                    with open(failed_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                finally:  # failed, or stopped (SIGTERM, Ctrl-C): no partial folder stays behind
                    shutil.rmtree(folder, ignore_errors=True)
            if on_done is not None:
                on_done()
    return stats


def _progress(out: Path, total: int, stop: threading.Event) -> None:
    """The main process's bar over all jobs: finished folders and recorded failures, polled."""
    with tqdm(total=total, desc="jobs") as bar:
        while True:
            finished = sum(1 for p in out.glob("*/done.json"))
            failed = sum(len(p.read_text().splitlines()) for p in out.glob("failed.*.jsonl"))
            bar.n = min(total, finished + failed)
            bar.refresh()
            if stop.wait(1.0):
                bar.n = min(total, sum(1 for p in out.glob("*/done.json"))
                            + sum(len(p.read_text().splitlines()) for p in out.glob("failed.*.jsonl")))
                bar.refresh()
                return


def write_manifest(out: Path, jobs: list[Job], line_failures: list[dict]) -> dict:
    """failed.jsonl (every failure, from every process) and manifest.jsonl (every job's state)."""
    failures = list(line_failures)
    for part in sorted(out.glob("failed.*.jsonl")):
        failures += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
        part.unlink()
    if (out / "failed.jsonl").exists():  # an earlier run's failures of jobs that still have no result
        earlier = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines() if line.strip()]
        known = {f["id"] for f in failures}
        failures += [f for f in earlier if f["id"] not in known and not (out / f["id"] / "done.json").is_file()]
    failed_ids = {f["id"] for f in failures}
    manifest = []
    for job in jobs:
        done = out / job.id / "done.json"
        state = "done" if done.is_file() else "failed" if job.id in failed_ids else "pending"
        entry = {"id": job.id, "kind": job.kind, "seed": job.seed, "state": state}
        if state == "done":
            entry["seconds"] = json.loads(done.read_text())["seconds"]
        manifest.append(entry)
    manifest += [{"id": f["id"], "line": f.get("line"), "state": "failed"} for f in line_failures]
    for name, rows in (("failed.jsonl", failures), ("manifest.jsonl", manifest)):
        partial = out / f".{name}.partial"
        partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
        partial.replace(out / name)
    return {"failures": failures, "manifest": manifest}


def jobs_from_seeds(spec: str, kind: str, folder: Path) -> Path:
    """A jobs file for world scenes start..stop−1 (layered_edit: each scenario's edit script, masks as
    PNGs), written into folder. The one place the product reaches for the toy world."""
    from world.jobs import write_jobs  # the batch runner's --from-seeds, by issue 24's request
    try:
        start, stop = (int(v) for v in spec.split(":"))
    except ValueError:
        raise JobError(f"--from-seeds: expected A:B (whole numbers, A < B), got {spec!r}") from None
    if not 0 <= start < stop:
        raise JobError(f"--from-seeds: expected A:B with 0 ≤ A < B, got {spec!r}")
    return write_jobs(range(start, stop), kind, folder)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jobs", help="a JSON-lines file, one job per line")
    source.add_argument("--from-seeds", help="A:B: jobs from world scenes A..B−1 (with --kind)")
    parser.add_argument("--kind", default="layered_edit", choices=KINDS, help="with --from-seeds")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--controlnet", default="embedded", help="the ControlNet of multiview_edit and driving_video")
    parser.add_argument("--steps", type=int, default=None, help="override every job's steps")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1: results "
                                                              "then do not depend on the process count)")
    args = parser.parse_args(argv)
    from accelerate import PartialState

    from pipelines.loading import ModelLoadError

    # cpu: without a GPU, processes started by torchrun (or mpirun) join over gloo; PartialState()
    # alone would leave each of them thinking it is the only one (and every job would run N times)
    state = PartialState(cpu=not torch.cuda.is_available())
    torch.set_num_threads(max(1, args.threads))
    # SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so the job in progress cleans up
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    out = Path(args.out)
    try:
        if state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
            for stale in out.glob(f"{TMP_PREFIX}*"):  # what a killed run left: never a result
                shutil.rmtree(stale, ignore_errors=True)
            if args.from_seeds:
                jobs_from_seeds(args.from_seeds, args.kind, out / ".jobs")
        state.wait_for_everyone()
        jobs_path = out / ".jobs" / "jobs.jsonl" if args.from_seeds else Path(args.jobs)
        jobs, line_failures = parse_jobs(jobs_path)
    except (JobError, OSError) as err:
        if state.is_main_process:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    runner = Runner(args.model, state.device if state.device.type != "cpu" else None, jobs_path.parent, args.steps,
                    args.controlnet)
    stop = threading.Event()
    bar = None
    if state.is_main_process:
        bar = threading.Thread(target=_progress, args=(out, len(jobs) + len(line_failures), stop), daemon=True)
        bar.start()
    wall, started = time.perf_counter(), time.time()
    try:
        run_batch(jobs, out, runner, state)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        stop.set()
        if bar is not None:
            bar.join()
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        record = write_manifest(out, jobs, line_failures)
        states = [m["state"] for m in record["manifest"]]
        seconds = [m["seconds"] for m in record["manifest"] if m.get("seconds") is not None]
        skipped = sum(1 for job in jobs if (out / job.id / "done.json").is_file()
                      and (out / job.id / "done.json").stat().st_mtime < started)
        summary = {"jobs": len(states), "done": states.count("done"), "failed": states.count("failed"),
                   "pending": states.count("pending"), "skipped": skipped,
                   "seconds_per_job": sum(seconds) / len(seconds) if seconds else None,
                   "wall_seconds": time.perf_counter() - wall, "processes": state.num_processes}
        print(f"\n| jobs | done | of them skipped (done before) | failed | s / job | processes | wall s |\n"
              f"|---|---|---|---|---|---|---|\n| {summary['jobs']} | {summary['done']} | {skipped} "
              f"| {summary['failed']} | {summary['seconds_per_job'] or 0:.2f} | {summary['processes']} "
              f"| {summary['wall_seconds']:.1f} |")
        for failure in record["failures"][:10]:
            print(f"  failed {failure['id']}: {failure['error']}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
