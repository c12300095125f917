"""Score a GenEval image folder with the official `evaluation/evaluate_images.py`, in the user's own environment.

The official pipeline (mmdet 2.x Mask2Former + open_clip) needs its own Python environment and a CUDA GPU (the
script asserts one), so it is run as a subprocess with the user's interpreter, their GenEval checkout's script and
their detector folder, with the official arguments:
```
PYTHON evaluate_images.py IMAGE_DIR --outfile OUTFILE --model-path MODEL_DIR [--model-config CONFIG]
       --options threshold=0.3 counting_threshold=0.9 max_objects=16 max_overlap=1.0 position_threshold=0.1
```
Its per-image results are then summarised by our `score_results`, which computes what the official
`summary_scores.py` prints (task accuracies over images, overall = mean over tasks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmgen.eval.geneval.results import read_results
from mmgen.eval.geneval.rules import DEFAULT_CONFIG, GenEvalConfig, score_results
from mmgen.eval.geneval.runner import iter_geneval_folder

from mmgen.errors import UserError

# The checkpoint `evaluation/download_models.sh` fetches; the script loads `<model-path>/<model option>.pth`.
OFFICIAL_DETECTOR = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
OFFICIAL_RESULTS_FILE = "results_official.jsonl"


def official_options(config: GenEvalConfig = DEFAULT_CONFIG) -> dict[str, str]:
    """Our rule settings as the official script's `--options` (`max_overlap` is its name for the NMS IoU)."""
    return {
        "threshold": str(config.threshold),
        "counting_threshold": str(config.counting_threshold),
        "max_objects": str(config.max_objects),
        "max_overlap": str(config.nms_threshold),
        "position_threshold": str(config.position_threshold),
    }


def official_command(image_dir: str | os.PathLike, script: str | os.PathLike, model_path: str | os.PathLike,
                     outfile: str | os.PathLike, python: str = sys.executable, model_config: str | None = None,
                     config: GenEvalConfig = DEFAULT_CONFIG, options: dict[str, str] | None = None) -> list[str]:
    """The command line that runs the official evaluation (absolute paths, so it works from any directory)."""
    command = [python, str(Path(script).resolve()), str(Path(image_dir).resolve()),
               "--outfile", str(Path(outfile).resolve()), "--model-path", str(Path(model_path).resolve())]
    if model_config:
        command += ["--model-config", str(Path(model_config).resolve())]
    merged = official_options(config) | (options or {})
    return command + ["--options", *(f"{key}={value}" for key, value in merged.items())]


def run_official_geneval(image_dir: str | os.PathLike, script: str | os.PathLike, model_path: str | os.PathLike,
                         python: str = sys.executable, outfile: str | os.PathLike | None = None,
                         model_config: str | None = None, config: GenEvalConfig = DEFAULT_CONFIG,
                         options: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run the official `evaluate_images.py` on `image_dir` and summarise its results with `score_results`.

    `options` adds or overrides `--options` entries (e.g. {"clip_model": "ViT-L-14"}). The per-image results go to
    `outfile` (default `<image_dir>/results_official.jsonl`). Everything is checked before the script starts.
    """
    image_dir = Path(image_dir)
    outfile = Path(outfile) if outfile else image_dir / OFFICIAL_RESULTS_FILE
    _check_inputs(image_dir, Path(script), Path(model_path), python, model_config, options or {})
    command = official_command(image_dir, script, model_path, outfile, python, model_config, config, options)
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"the official GenEval evaluation did not finish within {timeout} s") from None
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip()[-3000:]
        raise UserError(f"the official GenEval evaluation failed (exit status {completed.returncode}):\n"
                        f"$ {' '.join(command)}\n{tail}")
    if not outfile.is_file():
        raise UserError(f"the official GenEval evaluation finished but wrote no {outfile}")
    return score_results(read_results(outfile))


def _check_inputs(image_dir: Path, script: Path, model_path: Path, python: str, model_config: str | None,
                  options: dict[str, str]) -> None:
    iter_geneval_folder(image_dir)  # raises unless it holds prompt folders
    check_official_setup(script, model_path, python, model_config, options)


def check_official_setup(script: str | os.PathLike, model_path: str | os.PathLike, python: str = sys.executable,
                         model_config: str | None = None, options: dict[str, str] | None = None) -> None:
    """Check the official script, interpreter and detector folder exist, without running anything: a caller can
    fail in seconds, before generating the images the script is to score."""
    script, model_path, options = Path(script), Path(model_path), options or {}
    if not script.is_file():
        raise UserError(f"{script}: no such file; expected the official GenEval script "
                        "(<geneval checkout>/evaluation/evaluate_images.py)")
    resolved = shutil.which(python) if os.sep not in python else (python if os.access(python, os.X_OK) else None)
    if not resolved:
        raise UserError(f"{python}: no such Python executable; give the interpreter of your GenEval environment")
    if not model_path.is_dir():
        raise UserError(f"{model_path}: no such directory; expected the folder evaluation/download_models.sh "
                        "filled with the Mask2Former checkpoint")
    checkpoint = model_path / f"{options.get('model', OFFICIAL_DETECTOR)}.pth"
    if not checkpoint.is_file():
        raise UserError(f"{model_path}: holds no {checkpoint.name}, the detector checkpoint the official script loads")
    if model_config and not Path(model_config).is_file():
        raise UserError(f"{model_config}: no such mmdet model config file")
