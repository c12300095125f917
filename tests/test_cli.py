"""The `mmgen` entry point: verbs, help, honest refusals and one-line errors."""

import subprocess
import sys

import pytest

from mmgen.cli import NOT_YET_AVAILABLE, main

VERBS = ["data", "tokenizer", "train", "generate", "edit", "eval", "export", "demo"]


def test_help_lists_every_verb():
    result = subprocess.run([sys.executable, "-m", "mmgen", "--help"], capture_output=True, text=True, check=True)
    for verb in VERBS:
        assert f"    {verb}" in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert "usage: mmgen " + verb in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(NOT_YET_AVAILABLE))
def test_unbuilt_verbs_refuse_with_nonzero_exit(verb, capsys):
    assert main([verb]) != 0
    assert "not available in this version" in capsys.readouterr().err


def test_user_error_is_one_line(capsys):
    assert main(["data", "shapes", "--num", "0", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--num" in err
