"""Tests of models.summary: the layer table, MAC counting and the CLI."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import models
from models.summary import (count_macs, count_params, main, parse_input,
                            summarize)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "models.summary", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_macs_of_known_layers():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                        models.Shift.interleaved(8),
                        nn.Conv2d(8, 4, 1, stride=2),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    s = summarize(net, (3, 10, 10))
    assert [r.macs for r in s.rows] == [
        10 * 10 * 8 * 27, 0, 5 * 5 * 4 * 8, 0, 7 * 100]
    assert s.params == count_params(net) == 216 + 36 + 707
    assert s.output_shape == (7,) and s.shift_layers == 1
    shift_row = s.rows[1]
    assert (shift_row.type, shift_row.params, shift_row.macs) == ("Shift", 0, 0)


def test_transposed_conv_macs():
    net = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    # every input pixel of every input channel feeds out_channels * k * k
    assert count_macs(net, (4, 5, 5)) == 5 * 5 * 4 * 2 * 9


def test_summary_of_registered_model():
    s = summarize(models.get("shiftresnet20", expansion=3), (3, 32, 32))
    assert s.params == 95_642
    assert s.shift_layers == 9
    assert all(r.params == 0 and r.macs == 0
               for r in s.rows if r.type == "Shift")
    assert s.macs == sum(r.macs for r in s.rows)


@pytest.mark.parametrize("text,shape", [("3x32x32", (3, 32, 32)),
                                        ("1X28X28", (1, 28, 28))])
def test_parse_input(text, shape):
    assert parse_input(text) == shape


@pytest.mark.parametrize("bad", ["3x32", "axbxc", "3x0x32", "", "3*32*32"])
def test_parse_input_rejects(bad):
    with pytest.raises(ValueError):
        parse_input(bad)


def test_cli_table():
    r = run_cli("shiftresnet20", "--expansion", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "layer1.0.shift2" in out and "Shift" in out
    assert "total params: 95,642" in out
    assert "total MACs:" in out
    for line in out.splitlines():
        if " Shift " in line:
            assert line.split()[-2:] == ["0", "0"]


def test_cli_bad_name_subprocess():
    r = run_cli("nosuchnet")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model" in lines[0]
    assert "shiftresnet20" in lines[0]  # valid names are listed


def call_main(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own exits (--help, usage errors)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_input_and_classes(capsys):
    code, out, err = call_main(capsys, "shiftnet-c", "--input", "3x64x64",
                               "--classes", "7")
    assert code == 0, err
    assert "input 3x64x64 -> output 7" in out


@pytest.mark.parametrize("args,needle", [
    (("nosuchnet",), "unknown model"),
    (("resnet20", "--input", "3x32"), "--input"),
    (("resnet20", "--expansion", "3"), "expansion"),
    (("resnet20", "--input", "3x32x32x"), "--input"),
    (("johnson-style", "--classes", "10"), "num_classes"),
    (("resnet20", "--expansion", "x"), "--expansion"),
    ((), "required"),
])
def test_cli_errors_are_one_line(capsys, args, needle):
    code, out, err = call_main(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in err


def test_cli_help(capsys):
    code, out, _ = call_main(capsys, "--help")
    assert code == 0
    assert "--expansion" in out and "--input" in out and "--classes" in out
    assert "shiftnet-c" in out
