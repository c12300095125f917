"""DPG-Bench (ELLA): dense prompts, 2x2 grids of generations, judged question by question by a VQA model."""

from .judges import BlipVQAJudge, ScriptedJudge, VQAJudge, check_judge_spec, load_judge
from .runner import load_dpg_prompts, run_dpg
from .scorer import load_dpg_questions, read_dpg_results, score_dpg_folder, score_dpg_image, summarize

__all__ = [
    "BlipVQAJudge",
    "ScriptedJudge",
    "VQAJudge",
    "check_judge_spec",
    "load_dpg_prompts",
    "load_dpg_questions",
    "load_judge",
    "read_dpg_results",
    "run_dpg",
    "score_dpg_folder",
    "score_dpg_image",
    "summarize",
]
