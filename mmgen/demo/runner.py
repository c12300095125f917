"""`mmgen demo`: shapes data -> tokenizer -> vocabulary extension -> SFT -> benchmark -> GRPO -> benchmark -> report,
in one run directory.

Every stage runs the `mmgen` commands a user would type (in this process, to skip start-up costs) and the report
lists them, so each stage can be reproduced by hand. A finished stage writes `<out>/<stage>/stage.json` with its
summary and the commands it ran; re-running the demo reuses a finished stage when its commands are unchanged, and
otherwise redoes it and every stage after it (they read its outputs). `--force` redoes all. An interrupted
training stage resumes from its checkpoints when its commands are unchanged; any other stage starts over.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from rich.console import Console

from mmgen.demo.stages import FULL, QUICK, STAGES, DemoRun, Stage
from mmgen.errors import UserError
from mmgen.files import write_json_atomic


def run_demo(out: str | Path, force: bool = False, quick: bool = False, console: Console | None = None,
             stages: tuple[Stage, ...] = STAGES, seed: int = 0, precision: str = "auto") -> dict:
    """Run (or reuse) every stage, then write the report; returns the report (as in `<out>/report.json`).

    `seed` seeds every stage (data, tokenizer, vocabulary, SFT, GRPO, benchmark sampling); `precision` is the
    training and sampling precision of every stage ("auto": bf16 where the hardware has it natively, else fp32)."""
    import datasets

    from mmgen.demo.report import write_report
    from mmgen.hardware import machine_line, machine_summary
    from mmgen.runtime import resolve_precision

    datasets.disable_progress_bars()  # per-shard bars of `datasets` would interleave with the stages' own bars
    console = console or Console()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    demo = DemoRun(QUICK if quick else FULL, seed=seed, precision=precision)
    machine = {**machine_summary(), "precision": resolve_precision(precision).to_dict()}
    console.print(f"machine: {machine_line(machine)}; {resolve_precision(precision).line()}", soft_wrap=True)
    summaries: dict[str, dict] = {}
    redo = force
    for index, stage in enumerate(stages, start=1):
        label = f"[bold][{index}/{len(stages)}] {stage.title}[/bold]"
        commands = stage.commands(run_dir, demo)
        marker = run_dir / stage.name / "stage.json"
        previous = json.loads(marker.read_text()) if marker.exists() else None
        if not redo and previous is not None and previous.get("commands") == [command_line(a) for a in commands]:
            summaries[stage.name] = previous
            console.print(f"{label}: reused ({previous['seconds']:.0f}s earlier) - {stage.headline(previous)}",
                          soft_wrap=True)
            continue
        redo = True  # every later stage read this stage's outputs
        summaries[stage.name] = _run_stage(stage, run_dir, commands, quick, console, label, machine)
    write_json_atomic(run_dir / "summary.json", summaries)
    report = write_report(run_dir, summaries, machine)
    console.print(f"report: {run_dir / 'report.html'} (also report.md, report.json)", soft_wrap=True)
    return report


def _run_stage(stage: Stage, run_dir: Path, commands: list[list[str]], quick: bool, console: Console,
               label: str, machine: dict) -> dict:
    from mmgen.cli import main as mmgen_main

    stage_dir = run_dir / stage.name
    started = stage_dir / "started.json"
    lines = [command_line(argv) for argv in commands]
    # Only a run of the very same commands may be resumed: other budgets would resume into another schedule.
    resume = stage.resumable and started.exists() and json.loads(started.read_text()).get("commands") == lines
    if stage_dir.exists() and not resume:
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(started, {"commands": lines})
    console.print(f"{label}: running" + (" (resuming)" if resume else ""))
    start = time.perf_counter()
    for argv in commands:
        console.print(f"  $ {command_line(argv)}", highlight=False, soft_wrap=True)
        code = mmgen_main(argv)
        if code != 0:
            raise UserError(f"demo stage {stage.name!r} stopped: `{command_line(argv)}` exited with {code} (the "
                            f"lines above say why); fix it and run the demo again: finished stages are reused")
    seconds = time.perf_counter() - start
    # The machine a stage ran on travels with its time: a reused stage keeps the line of the run that made it.
    summary = {**stage.summarize(run_dir), "seconds": round(seconds, 1), "commands": lines, "quick": quick,
               "machine": machine}
    write_json_atomic(stage_dir / "stage.json", summary)
    console.print(f"{label}: done in {seconds:.0f}s - {stage.headline(summary)}", soft_wrap=True)
    return summary


def command_line(argv: list[str]) -> str:
    """`mmgen ...` as a shell line; paths inside the working directory are shown relative to it."""
    cwd = Path.cwd()
    return shlex.join(["mmgen", *(_relative(arg, cwd) for arg in argv)])


def _relative(arg: str, cwd: Path) -> str:
    key, sep, value = arg.rpartition("=")
    path = Path(value)
    if path.is_absolute() and path.is_relative_to(cwd):
        value = str(path.relative_to(cwd))
    return f"{key}{sep}{value}"
