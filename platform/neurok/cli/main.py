"""`neurok <group> <command> ...`: one console script; each group registers itself from its own module."""

from __future__ import annotations

import argparse
import logging
import sys

from neurok.errors import NeurokError

# Each module exposes register(subparsers); a command's handler is set as `func` on its parser.
GROUPS = (
    "neurok.cli.data",
    "neurok.cli.train",
    "neurok.cli.eval",
    "neurok.cli.simulate",
    "neurok.cli.registry",
    "neurok.cli.serve",
    "neurok.cli.tune",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="neurok", description="NeuROK: learn and simulate 4D object dynamics."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for module in GROUPS:
        importlib.import_module(module).register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (argparse alone stops at the first option)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args) or 0
    except NeurokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
