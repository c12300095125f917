"""`python -m bench [NAME ...] [--json PATH]`: run the benchmarks (all by default) and print their tables."""

from __future__ import annotations

import argparse
import importlib
import json

BENCHMARKS = ["tokenizer", "sampling", "sft", "grpo", "grpo_memory"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", default=BENCHMARKS, help=f"benchmarks to run (default: {BENCHMARKS})")
    parser.add_argument("--json", help="write every benchmark's figures to this JSON file")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {BENCHMARKS}")
    results = {name: importlib.import_module(f"bench.{name}").run() for name in args.names}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
