"""Launch the Strata app: python -m app [--host 127.0.0.1] [--port 7860] [--model embedded …]
[--size 512] [--steps 20] [--device cuda] [--dtype float16].

--model may be given several times: those are the models clients may choose from (the first is the
default; the embedded one is always offered). Clients can never load anything else. --size and
--steps: what every session edits at (default: the first model's own size, 20 steps).
"""

import argparse
import sys

from app.ui import build_app, launch_options
from pipelines.layered_edit import EditSettings
from pipelines.loading import check_device, parse_dtype


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", action="append", default=None,
                        help="'embedded', a local diffusers folder, or a hub id (repeat for several)")
    parser.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    args = parser.parse_args(argv)
    try:
        settings = EditSettings(height=args.size, width=args.size, steps=args.steps)
        demo = build_app(args.model or ["embedded"], settings=settings, device=check_device(args.device),
                         dtype=parse_dtype(args.dtype))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    demo.launch(server_name=args.host, server_port=args.port, **launch_options(demo))


if __name__ == "__main__":
    main()
