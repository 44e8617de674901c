"""A small load check of the app: N concurrent gradio_client users, each starting a scene and
adding layers through the queue, on the embedded default model (or --model).

    python -m benchmarks.app_load --clients 8 --edits 3 --json out.json

Prints per-request latency percentiles (p50, p90, p99, max, seconds) for scene starts and layer
additions, the number of errors (must be 0), lost edits (each user's session must hold its scene and
every layer it added, checked in the server's store after the run: must be 0), the server's peak
resident memory and its work folder's size before and after (with a download per user), and the
wall time. The app runs in this process on 127.0.0.1 and a free port, with the app's own queue
settings and a session store sized for the clients.

JSON keys: machine, clients, edits, errors, lost_edits, wall_seconds, peak_rss_mib,
work_folder_bytes.{before, after}, latency.<request>.{n, p50, p90, p99, max}.
"""

from __future__ import annotations

import argparse
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from app.sessions import SessionStore
from app.layered import DISPLAY
from app.ui import build_app, launch_options
from benchmarks.common import machine, print_table, write_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stroke(folder: Path, k: int, size: int) -> str:
    layer = np.zeros((size * DISPLAY, size * DISPLAY, 4), dtype=np.uint8)
    x0 = (k * 17) % (size * DISPLAY // 2)
    layer[x0:x0 + size * DISPLAY // 3, x0:x0 + size * DISPLAY // 3] = (255, 0, 255, 255)
    path = folder / f"stroke{k}.png"
    Image.fromarray(layer).save(path)
    return str(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--edits", type=int, default=3)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    demo = build_app(args.model, SessionStore(max_sessions=args.clients * 2))
    settings = demo.strata.settings  # the model's own size
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(demo))
    url = f"http://127.0.0.1:{port}/"
    folder = Path(tempfile.mkdtemp(prefix="strata-load-"))
    strokes = [_stroke(folder, k, settings.height) for k in range(args.edits)]
    latencies: dict[str, list[float]] = {"start scene": [], "add layer": [], "download": []}
    errors: list[str] = []
    lock = threading.Lock()
    downloads = []
    work_before = demo.strata.work.size()

    def user(i: int) -> None:
        client = Client(url, verbose=False)
        try:
            start = time.perf_counter()
            message = client.predict(demo.strata.models.default, "an empty scene of grass", i,
                                     api_name="/start_from_prompt")[3]
            with lock:
                latencies["start scene"].append(time.perf_counter() - start)
            for k in range(args.edits):
                editor = {"background": None, "layers": [handle_file(strokes[k])], "composite": None, "id": None}
                start = time.perf_counter()
                _, _, gallery, message, *_ = client.predict(editor, "a red circle", 10 * i + k, False,
                                                            api_name="/add_layer")
                with lock:
                    latencies["add layer"].append(time.perf_counter() - start)
                if message.startswith("⚠️") or len(gallery) != k + 2:
                    raise RuntimeError(f"user {i} edit {k}: {message or len(gallery)}")
            start = time.perf_counter()
            archive, message = client.predict(api_name="/download_session")
            with lock:
                latencies["download"].append(time.perf_counter() - start)
                downloads.append(archive)
            if not archive:
                raise RuntimeError(f"user {i} download: {message}")
        except Exception as exc:  # counted and reported, the load check goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    wall = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    # every user's scene and layers are in the server's store (a lost update would show here)
    sessions = list(demo.strata.store._sessions.values())
    lost = args.clients * (1 + args.edits) - sum(len(session.layers) for session, _ in sessions)
    work_after = demo.strata.work.size()
    demo.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows, result = [], {"machine": machine(), "clients": args.clients, "edits": args.edits, "errors": errors,
                        "lost_edits": lost, "wall_seconds": wall, "peak_rss_mib": peak_mib,
                        "work_folder_bytes": {"before": work_before, "after": work_after}, "latency": {}}
    for name, values in latencies.items():
        v = np.array(values) if values else np.array([np.nan])
        stats = {"n": len(values), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
                 "p99": float(np.percentile(v, 99)), "max": float(v.max())}
        result["latency"][name] = stats
        rows.append([name, stats["n"], stats["p50"], stats["p90"], stats["p99"], stats["max"]])
    print_table(f"App load: {args.clients} clients × {args.edits} edits, {args.model}, {machine()}",
                ["request", "n", "p50 s", "p90 s", "p99 s", "max s"], rows)
    print(f"errors: {len(errors)}; lost edits: {lost}; wall time {wall:.1f} s; peak resident memory {peak_mib:.0f} MiB; "
          f"work folder {work_before / 2**20:.2f} MiB before, {work_after / 2**20:.2f} MiB after "
          f"({len(downloads)} downloads kept for the browser, swept after {demo.strata.work.keep_seconds:.0f} s)")
    for e in errors[:5]:
        print("  ", e)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
