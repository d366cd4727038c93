"""quant.model_card: a card from run directories and an evaluation, and its program check."""

import json

import pytest

from quant.model_card import card


def _setup(tmp_path, evaluated_bytes=b"PROGRAM"):
    program = tmp_path / "net.shiftprog"
    program.write_bytes(b"PROGRAM")
    staged = tmp_path / "staged.shiftprog"
    staged.write_bytes(evaluated_bytes)
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"finished": True, "command": "train", "test_top1": 81.5,
                                                 "history": [1, 2, 3]}))
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"program": str(staged), "golden_top1": 0.815}))
    return program, run, evaluation


def test_card_names_the_program_when_a_byte_identical_copy_was_evaluated(tmp_path):
    program, run, evaluation = _setup(tmp_path)
    c = card(str(program), [run], evaluation, "export", "evaluate", "note")
    assert c["evaluate"] == {"program": str(program), "golden_top1": 0.815}
    assert c["stages"] == [{"command": "train", "test_top1": 81.5}]    # only STAGE_FIELDS


def test_card_refuses_an_evaluation_of_different_bytes(tmp_path):
    program, run, evaluation = _setup(tmp_path, evaluated_bytes=b"OTHER")
    with pytest.raises(SystemExit, match="differs from"):
        card(str(program), [run], evaluation, "export", "evaluate", "note")


def test_card_refuses_an_unfinished_run(tmp_path):
    program, run, evaluation = _setup(tmp_path)
    (run / "result.json").write_text(json.dumps({"finished": False}))
    with pytest.raises(SystemExit, match="did not finish"):
        card(str(program), [run], evaluation, "export", "evaluate", "note")
