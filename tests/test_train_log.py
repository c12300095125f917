"""train_log.jsonl: one JSON line per trainer log call, trimmed on resume, readable after a crash."""

import json

from transformers import TrainerState, TrainingArguments

from mmgen.train.train_log import TRAIN_LOG, TrainLogCallback, read_train_log


def _log(callback, state, step, **logs):
    state.global_step = step
    callback.on_log(None, state, None, logs=logs)


def test_lines_after_the_resumed_checkpoint_are_dropped(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback = TrainLogCallback(tmp_path)
    state = TrainerState()
    callback.on_train_begin(args, state, None)
    for step in (1, 2, 3, 4):
        _log(callback, state, step, loss=1.0 / step)
    state.global_step = 2  # resumed from checkpoint-2
    callback.on_train_begin(args, state, None)
    _log(callback, state, 3, loss=0.5)
    assert [(row["step"], row["loss"]) for row in read_train_log(tmp_path / TRAIN_LOG)] == [(1, 1.0), (2, 0.5),
                                                                                             (3, 0.5)]


def test_non_finite_values_are_written_as_null_and_a_torn_line_is_skipped(tmp_path):
    callback = TrainLogCallback(tmp_path)
    _log(callback, TrainerState(), 1, loss=float("nan"), reward=float("inf"), note="x")
    with (tmp_path / TRAIN_LOG).open("a") as log:
        log.write('{"step": 2, "lo')  # the writer was killed mid-line
    assert read_train_log(tmp_path / TRAIN_LOG) == [{"step": 1, "loss": None, "reward": None, "note": "x"}]
    json.loads((tmp_path / TRAIN_LOG).read_text().splitlines()[0])  # strict JSON: no NaN literal
