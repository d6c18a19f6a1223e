"""`neurok data generate | ingest | validate | inspect`."""

from __future__ import annotations

import argparse
import json
import sys

from neurok.config import load_config


class IngestFormats:
    """The ingest formats, as argparse choices, read from the reader table (data.ingest.FORMATS) only when
    argparse asks: importing the readers costs ~1.5 s, which `neurok --help` should not pay."""

    def __contains__(self, name: object) -> bool:
        return name in self.table()

    def __iter__(self):
        return iter(self.table())

    @staticmethod
    def table() -> dict:
        from neurok.data.ingest import FORMATS

        return FORMATS


def register(groups: argparse._SubParsersAction) -> None:
    data = groups.add_parser("data", help="build and check 4D datasets")
    commands = data.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="simulate a recipe into a store (resumes if interrupted)")
    gen.add_argument("recipe", help="recipe YAML, e.g. datasets/tiny.yaml")
    gen.add_argument("--out", required=True, help="store path or fsspec URL (.zarr)")
    gen.add_argument("--no-progress", action="store_true")
    gen.add_argument("overrides", nargs="*", help="dotted key=value overrides of the recipe")
    gen.set_defaults(func=_generate)

    ing = commands.add_parser("ingest", help="convert public 4D files into a store")
    ing.add_argument("source", help="file or folder to read")
    ing.add_argument(
        "--format", required=True, choices=IngestFormats(), metavar="FORMAT", help="one of %(choices)s"
    )
    ing.add_argument("--out", required=True, help="store path or fsspec URL (.zarr)")
    ing.add_argument("overrides", nargs="*", help="dotted key=value overrides of the ingest config")
    ing.set_defaults(func=_ingest)

    val = commands.add_parser("validate", help="check a store; exits 1 when a check fails")
    val.add_argument("path")
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    val.add_argument("overrides", nargs="*", help="dotted key=value overrides of the thresholds")
    val.set_defaults(func=_validate)

    ins = commands.add_parser("inspect", help="print a store's dataset card")
    ins.add_argument("path")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_inspect)


def _generate(args: argparse.Namespace) -> int:
    from neurok.data.card import bytes_on_disk, format_card
    from neurok.data.generate.recipe import Recipe
    from neurok.data.generate.run import generate

    recipe = load_config(Recipe, args.recipe, args.overrides)
    card = generate(recipe, args.out, progress=not args.no_progress)
    print(format_card(card, args.out, bytes_on_disk(args.out)))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from neurok.data.card import bytes_on_disk, format_card
    from neurok.data.ingest import IngestConfig, ingest

    cfg = load_config(IngestConfig, None, [f"format={args.format}", *args.overrides])
    summary = ingest(args.source, args.out, cfg)
    print(format_card(summary["card"], args.out, bytes_on_disk(args.out)))
    print(
        f"  loader shards written {len(summary['written_shards'])}, kept from an earlier run "
        f"{len(summary['skipped_shards'])}"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from neurok.data.validate import ValidateConfig, validate

    report = validate(args.path, load_config(ValidateConfig, None, args.overrides))
    if args.json:
        print(json.dumps({"path": report.path, "ok": report.ok, "faults": report.faults}, indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _inspect(args: argparse.Namespace) -> int:
    from neurok.data.card import bytes_on_disk, dataset_card, format_card
    from neurok.data.store import Store

    store = Store(args.path)
    stored = store.attrs.get("card", {})
    card = dataset_card(store, stored.get("sources"), stored.get("notes"))
    if args.json:
        json.dump({**card, "bytes_on_disk": bytes_on_disk(args.path)}, sys.stdout, indent=2)
        print()
    else:
        print(format_card(card, args.path, bytes_on_disk(args.path)))
    return 0
