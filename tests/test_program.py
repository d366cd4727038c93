"""The .shiftprog format: round trip, validation, and one-line errors for bad files."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from quant import golden, program
from quant.synthetic import random_program


def _same(a: program.Program, b: program.Program):
    assert a.tensors == b.tensors
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert la.name == lb.name and la.stride == lb.stride
        for key in ("weight", "bias", "gather"):
            va, vb = getattr(la, key), getattr(lb, key)
            assert (va is None and vb is None) or np.array_equal(va, vb)
        assert (la.requant is None) == (lb.requant is None)
        if la.requant:
            assert np.array_equal(la.requant.multiplier, lb.requant.multiplier)
            assert np.array_equal(la.requant.shift, lb.requant.shift)
        assert la.residual == lb.residual and la.pool == lb.pool


def test_round_trip_preserves_program_and_outputs(tmp_path):
    p = random_program(3)
    path = tmp_path / "net.shiftprog"
    program.save(p, path)
    q = program.load(path)
    _same(p, q)
    x = torch.randint(-128, 128, p.tensors[p.input].shape)
    assert torch.equal(golden.run(p, x)[p.output], golden.run(q, x)[q.output])


def _rewrite_header(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "program.json":
                header = json.loads(data)
                edit(header)
                data = json.dumps(header).encode()
            zout.writestr(item, data)


def _error_of(path) -> str:
    with pytest.raises(program.ProgramError) as info:
        program.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.shiftprog"
    program.save(random_program(0), good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.shiftprog"
    truncated.write_bytes(raw[: len(raw) // 2])
    assert "not a shiftprog file" in _error_of(truncated)

    garbage = tmp_path / "garbage.shiftprog"
    garbage.write_bytes(b"hello world" * 10)
    assert "not a shiftprog file" in _error_of(garbage)

    assert "no such program file" in _error_of(tmp_path / "missing.shiftprog")

    version = tmp_path / "version.shiftprog"
    _rewrite_header(good, version, lambda h: h.update(version=99))
    assert "version 99 is not supported" in _error_of(version)

    fmt = tmp_path / "format.shiftprog"
    _rewrite_header(good, fmt, lambda h: h.update(format="onnx"))
    assert "not a shiftprog file" in _error_of(fmt)

    shape = tmp_path / "shape.shiftprog"
    _rewrite_header(good, shape, lambda h: h["tensors"][1].update(shape=[8, 8, 99]))
    assert "layer" in _error_of(shape)

    missing = tmp_path / "missing_member.shiftprog"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(missing, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("000.weight.npy"):
                zout.writestr(item, zin.read(item.filename))
    assert "missing entry" in _error_of(missing)


def test_corrupted_member_is_detected(tmp_path):
    good = tmp_path / "good.shiftprog"
    program.save(random_program(0), good)
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("arrays/001.weight.npy")
    # flip bytes inside the stored member's compressed data
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 4
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.shiftprog"
    bad.write_bytes(bytes(data))
    _error_of(bad)


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: setattr(p.layers[1], "weight", p.layers[1].weight * 2), "outside"),
    (lambda p: setattr(p.layers[0], "stride", 3), "stride"),
    (lambda p: setattr(p.layers[3], "gather", p.layers[3].gather[:-1]), "gather"),
    (lambda p: setattr(p.layers[2], "input", "block"), "before any layer writes it"),
    (lambda p: p.layers[0].requant.multiplier.__setitem__(0, 0), "multiplier"),
])
def test_validation_catches_inconsistent_programs(mutate, needle):
    p = random_program(0)
    mutate(p)
    with pytest.raises(program.ProgramError, match=needle):
        p.validate()


def test_cli_reports_and_rejects(tmp_path):
    good = tmp_path / "good.shiftprog"
    program.save(random_program(0), good)
    ok = subprocess.run([sys.executable, "-m", "quant.program", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "classifier" in ok.stdout and "synthetic" in ok.stdout
    bad = tmp_path / "bad.shiftprog"
    bad.write_bytes(b"nope")
    res = subprocess.run([sys.executable, "-m", "quant.program", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
