"""``qmml check-config``: validate a pipeline config (``qmml.config.load_config``)."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfile", help="pipeline config (YAML)")
    parser.add_argument("--show", action="store_true",
                        help="print the settings the pipeline would run (defaults filled in)")


def run(args: argparse.Namespace) -> int:
    from qmml.config import load_config

    config = load_config(args.configfile)
    if args.show:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False))
    else:
        print(f"{args.configfile}: valid")
    return 0
