"""Launch the Strata app: python -m app [--host 127.0.0.1] [--port 7860] [--model embedded …].

--model may be given several times: those are the models clients may choose from (the first is the
default; the embedded one is always offered). Clients can never load anything else.
"""

import argparse

from app.ui import build_app, launch_options


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", action="append", default=None,
                        help="'embedded', a local diffusers folder, or a hub id (repeat for several)")
    args = parser.parse_args(argv)
    demo = build_app(args.model or ["embedded"])
    demo.launch(server_name=args.host, server_port=args.port, **launch_options(demo))


if __name__ == "__main__":
    main()
