"""Launch the Strata app: python -m app [--host 127.0.0.1] [--port 7860] [--model embedded]."""

import argparse

from app.ui import CSS, MAX_UPLOAD, build_app


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", default="embedded", help="'embedded', a local diffusers folder, or a hub id")
    args = parser.parse_args(argv)
    build_app(args.model).launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, css=CSS)


if __name__ == "__main__":
    main()
