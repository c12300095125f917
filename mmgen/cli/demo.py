"""`mmgen demo`: the end-to-end demo."""

from __future__ import annotations


def add_parser(verbs) -> None:
    demo = verbs.add_parser("demo", help="run the end-to-end demo on the shapes world",
                            description="Shapes data -> tokenizer -> vocabulary extension of a tiny LLM -> SFT -> "
                            "shapes benchmark -> GRPO -> shapes benchmark -> report (report.html, report.md, "
                            "report.json), in one run directory. Finished stages are reused; --force redoes them.")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--force", action="store_true", help="redo finished stages")
    demo.add_argument("--quick", action="store_true",
                      help="toy training budgets: checks the whole pipeline in about a minute (numbers meaningless)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of every stage: data, tokenizer, vocabulary, SFT, GRPO, benchmark (default 0)")
    demo.add_argument("--mixed-precision", choices=["auto", "fp32", "bf16"], default="auto",
                      help="training and sampling precision of every stage; auto (default): bf16 where this machine "
                           "has it natively (AVX512-BF16, AMX, CUDA), else fp32")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from mmgen.demo import run_demo

    run_demo(args.out, force=args.force, quick=args.quick, seed=args.seed, precision=args.mixed_precision)
    return 0
