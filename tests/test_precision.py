"""`mixed_precision: auto` follows the hardware: bf16 where it is native (CUDA with bf16, AVX512-BF16/AMX CPUs),
fp32 elsewhere. The capability probes are patched both ways so the decision is tested on any machine."""

import json
import logging

import pytest
import torch

from mmgen import runtime
from mmgen.runtime import resolve_precision
from mmgen.train.image_loop import ImageTrainingConfig, make_accelerator
from mmgen.train.settings import TrainerSettings


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether the CPU has native bf16; resets the once-per-process warning."""
    def set_native(native: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(runtime, "_warned_emulated_bf16", False)
    return set_native


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu_bf16):
    cpu_bf16(True)
    precision = resolve_precision("auto", "cpu")
    assert precision.name == "bf16" and precision.dtype == torch.bfloat16
    assert "native bf16" in precision.reason


def test_auto_is_fp32_on_a_cpu_that_emulates_bf16(cpu_bf16):
    cpu_bf16(False)
    precision = resolve_precision("auto", "cpu")
    assert precision.name == "fp32" and "no native bf16" in precision.reason


def test_amx_alone_counts_as_native(monkeypatch, cpu_bf16):
    cpu_bf16(False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu").name == "bf16"


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")).name == "fp32"


def test_explicit_bf16_on_an_emulating_cpu_runs_and_warns_once(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="mmgen.runtime"):
        first = resolve_precision("bf16", "cpu")
        resolve_precision("bf16", "cpu")
    assert first.name == "bf16" and "emulated" in first.reason
    warnings = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "auto" in warnings[0] and "slower" in warnings[0]


def test_explicit_bf16_on_a_native_cpu_does_not_warn(cpu_bf16, caplog):
    cpu_bf16(True)
    with caplog.at_level(logging.WARNING, logger="mmgen.runtime"):
        assert resolve_precision("bf16", "cpu").name == "bf16"
    assert not caplog.records


def test_unknown_precision_is_refused():
    with pytest.raises(Exception, match="unknown precision 'bf17'"):
        resolve_precision("bf17", "cpu")


def test_trainer_settings_default_to_auto_and_map_to_trainer_flags(cpu_bf16, tmp_path):
    settings = TrainerSettings()
    assert settings.mixed_precision == "auto"
    cpu_bf16(False)
    args = settings.trainer_arguments(tmp_path)
    assert args["bf16"] is False and args["fp16"] is False
    cpu_bf16(True)
    assert settings.trainer_arguments(tmp_path)["bf16"] is True


def test_image_stage_accelerator_follows_auto_and_records_it(cpu_bf16, tmp_path, capsys):
    cpu_bf16(False)
    accelerator = make_accelerator(ImageTrainingConfig(), tmp_path / "run", "tokenizer")
    assert accelerator.mixed_precision == "no"
    recorded = json.loads((tmp_path / "run" / "precision.json").read_text())
    assert recorded["name"] == "fp32" and "no native bf16" in recorded["reason"]
    assert "tokenizer: precision fp32" in capsys.readouterr().out


def test_every_shipped_trainer_recipe_uses_auto():
    from pathlib import Path

    import yaml

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for path in recipes.glob("*/*.yaml"):
        if path.parent.name == "accelerate":
            continue
        training = (yaml.safe_load(path.read_text()) or {}).get("training", {})
        assert training.get("mixed_precision", "auto") == "auto", path


def test_machine_summary_measures_the_matmul_peak_and_names_the_machine(cpu_bf16):
    from mmgen.hardware import machine_line, machine_summary, matmul_peak_gflops

    assert matmul_peak_gflops(torch.float32, budget_s=0.05, sizes=(64, 128)) > 0
    cpu_bf16(False)
    summary = machine_summary(measure=False)
    assert summary["native_bf16"] is False and summary["threads"] == torch.get_num_threads()
    assert "no native bf16 (emulated)" in machine_line(summary)
