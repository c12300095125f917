"""Run by `torchrun --nproc_per_node 2` from tests/test_sft.py: SFT on every rank, then each rank writes a
checksum of its own weights so the test can check the ranks stayed identical."""

import json
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from mmgen.config import load_config
from mmgen.train.sft import SFTRecipe, train_sft


class WriteChecksum(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        weights = {name: float(p.detach().double().sum()) for name, p in model.named_parameters()}
        Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({"world": world, "step": state.global_step,
                                                                     "weights": weights}))


if __name__ == "__main__":
    train_sft(load_config(SFTRecipe, None, sys.argv[2:]), callbacks=[WriteChecksum()])
