"""The SFT and GRPO throughput benchmarks run end to end at a tiny size and report consistent figures."""

import pytest
import torch

from bench import grpo as grpo_bench
from bench import sft as sft_bench


@pytest.fixture(autouse=True)
def fp32_only(monkeypatch):
    # bf16 timing adds nothing to what these tests check, and would double their time on a native-bf16 CPU.
    monkeypatch.setattr(sft_bench, "precisions", lambda: ["fp32"])
    monkeypatch.setattr(grpo_bench, "precisions", lambda: ["fp32"])
    torch.manual_seed(0)


def test_sft_bench_times_both_loops_on_the_same_tokens():
    result = sft_bench.measure(batch_size=4, warmup=1, steps=2, layers=1)
    row = result["precisions"]["fp32"]
    assert result["tokens_per_step"] > 4 * 64  # a caption plus 64 codes and the markers, per row
    for loop in ("bare", "mmgen"):
        assert row[f"{loop}_step_s"] > 0
        assert row[f"{loop}_tokens_per_s"] == pytest.approx(result["tokens_per_step"] / row[f"{loop}_step_s"],
                                                            rel=0.01)
        assert 0 < row[f"{loop}_peak_share"] < 1
    assert row["ratio"] == pytest.approx(row["bare_step_s"] / row["mmgen_step_s"], rel=0.01)
    sft_bench.print_table(result)


def test_grpo_bench_splits_each_step_into_its_phases():
    result = grpo_bench.measure(warmup=1, steps=1, layers=1,
                                overrides=("training.batch_size=8", "rollout.num_generations=4"))
    row = result["precisions"]["fp32"]
    assert result["completions_per_step"] == 8
    for phase in ("rollout", "decode", "reward", "update"):
        assert row[phase] > 0, phase
    assert row["log-prob"] == 0  # beta 0 and aligned generation: TRL computes no old/reference log-probs
    assert row["other"] >= 0
    assert sum(row[p] for p in grpo_bench.PHASES) == pytest.approx(row["step"], abs=0.01)
    assert row["bare_sampler"] > 0
    grpo_bench.print_table(result)
