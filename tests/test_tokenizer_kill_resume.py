"""End to end: SIGKILL a real `mmgen tokenizer train` process mid-run, re-run the same command, compare."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmgen.tokenizers import load_visual_tokenizer

pytestmark = pytest.mark.slow

RECIPE = """\
stage: tokenizer
output_dir: {out}
model:
  image_size: 16
  patch_size: 1
  block_out_channels: [16, 16]
  norm_num_groups: 8
  latent_channels: 8
  mid_block_add_attention: false
  quantizer: {{kind: vq, codebook_size: 32}}
data: {{num_images: 256, eval_images: 8}}
training:
  max_steps: 120
  batch_size: 8
  warmup_steps: 5
  mixed_precision: fp32
  checkpoint_every: 20
  sample_every: 1000
  log_every: 10
"""


def train_command(recipe):
    return [sys.executable, "-m", "mmgen", "tokenizer", "train", str(recipe)]


def write_recipe(tmp_path, name):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / name))
    return recipe


def test_sigkill_then_same_command_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in both runs, so weights compare exactly
    straight = write_recipe(tmp_path, "straight")
    subprocess.run(train_command(straight), check=True, env=env, capture_output=True)

    killed = write_recipe(tmp_path, "killed")
    process = subprocess.Popen(train_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not any(checkpoints.glob("step_*[0-9]")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(checkpoints.glob("step_*[0-9]")), "no checkpoint was written before the kill"
    assert not (tmp_path / "killed" / "tokenizer").exists()

    resumed = subprocess.run(train_command(killed), check=True, env=env, capture_output=True, text=True)
    assert "resuming from" in resumed.stdout + resumed.stderr
    expected = load_visual_tokenizer(tmp_path / "straight" / "tokenizer").state_dict()
    got = load_visual_tokenizer(tmp_path / "killed" / "tokenizer").state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
