"""`mmgen` command line: one entry point, one verb per stage.

One module per verb group in this package; each adds its parsers with `add_parser(verbs)`. Verbs import their
stage lazily so `mmgen --help` stays instant (no torch import). Errors the user can fix print as one line and
exit 2.
"""

from __future__ import annotations

import argparse
import sys

from mmgen.cli import data, demo, evaluate, model, tokenizer, train

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmgen",
        description="Turn an open causal LLM into a unified multimodal generator.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in (data, tokenizer, model, train, evaluate, demo):
        module.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmgen.errors import UserError

    try:
        return args.handler(args)
    except UserError as err:
        print(f"mmgen {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"mmgen {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
