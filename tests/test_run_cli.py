"""``python host/run.py``: model resolution, inputs, errors, and the report, with a fake board.

The fake accelerator runs the golden model itself (optionally with one logit
corrupted) and counts cycles from the MACs, so these tests need neither the
engine nor a simulator. One untrained ShiftResNet-20 (E=1) program is exported
for the whole module (a few seconds).
"""

import contextlib
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from host import report as rep
from host import run
from host.models import UNTRAINED_NOTE, ModelError, find_trained, program_bits, resolve_program
from quant import golden
from quant.program import ProgramError, save

REPO = Path(__file__).resolve().parent.parent
ROWS, COLS = 8, 8


# ----------------------------------------------------------------------------- fixtures and fakes


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The untrained fallback (nothing in an empty models/trained), and its description."""
    empty = tmp_path_factory.mktemp("no-trained")
    return resolve_program("shiftresnet20", 1, None, None, trained_dir=empty)


@pytest.fixture(scope="module")
def program(untrained):
    return untrained[0]


@pytest.fixture(scope="module")
def program_file(program, tmp_path_factory):
    path = tmp_path_factory.mktemp("prog") / "srn20e1.shiftprog"
    save(program, path)
    return path


@dataclass(frozen=True)
class FakeParams:
    rows: int = ROWS
    cols: int = COLS
    lanes: int = 8
    act_words: int = 1 << 16
    weight_words: int = 1 << 16
    max_layers: int = 64


def layer_macs(program):
    out = []
    for layer in program.layers:
        h, w, _ = program.tensors[layer.input].shape
        out.append(-(-h // layer.stride) * -(-w // layer.stride) * layer.macs_per_pixel)
    return out


def fake_compile(program, params):
    assert isinstance(params, FakeParams)
    return SimpleNamespace(layer_names=[layer.name for layer in program.layers], macs=layer_macs(program),
                           upload_words=sum(layer.weight.size + layer.bias.size for layer in program.layers))


class FakeAccelerator:
    """The Accelerator API over the golden model; ``corrupt`` adds 1 to that logit."""

    OVERHEAD = 7  # cycles between layers

    def __init__(self, program, corrupt=None):
        self.params = FakeParams()
        self.program = program
        self.corrupt = corrupt
        self.compiled = None
        self.inputs = []

    def load(self, compiled, *, progress=False):
        self.compiled = compiled

    def infer(self, x_q):
        assert self.compiled is not None, "infer before load"
        assert isinstance(x_q, np.ndarray) and x_q.shape == self.program.tensors[self.program.input].shape
        self.inputs.append(x_q)
        logits = golden.run(self.program, torch.as_tensor(x_q))[self.program.output].flatten().numpy().copy()
        if self.corrupt is not None:
            logits[self.corrupt] += 1
        cycles = [m // (ROWS * COLS) + 11 for m in self.compiled.macs]
        return SimpleNamespace(logits=logits, layer_cycles=cycles, total_cycles=sum(cycles) + self.OVERHEAD)


def fake_connect(acc):
    @contextlib.contextmanager
    def connect(target, say):
        assert target.simulated or target.port
        yield acc
    return connect


def run_cli(argv, capsys, acc=None, connect=None):
    rc = run.main([str(a) for a in argv], connect=connect or fake_connect(acc), compile_program=fake_compile)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def sample_logits(program, path):
    """Golden logits of an image file, computed here independently of host/run.py's image reader."""
    hwc = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    return golden.predict(program, hwc).numpy()


# ----------------------------------------------------------------------------- model resolution


def test_untrained_fallback_is_labelled(untrained):
    program, description = untrained
    assert description == UNTRAINED_NOTE
    assert "UNTRAINED" in description and "seed 0" in description
    assert program.model == "shiftresnet20" and program.model_args == {"expansion": 1}
    assert program.meta["trained"] is False and program.meta["seed"] == 0
    assert program_bits(program) == "w8a8"
    assert program.tensors[program.input].shape == (32, 32, 3)


def test_trained_program_is_found_and_preferred(program, tmp_path):
    def put(filename, meta=(), **changes):
        copy = dataclasses.replace(program, meta={**program.meta, "trained": True, "dataset": "cifar10", **dict(meta)},
                                   **changes)
        save(copy, tmp_path / filename)
        return tmp_path / filename

    put("a_w4.shiftprog", meta={"bits": "w4a4"})
    w8 = put("b_w8.shiftprog", meta={"bits": "w8a8"})
    put("c_e3.shiftprog", model_args={"expansion": 3}, meta={"bits": "w8a8"})
    put("0_untrained.shiftprog", meta={"trained": False, "bits": "w8a8"})
    (tmp_path / "1_broken.shiftprog").write_bytes(b"not a zip")

    assert find_trained("shiftresnet20", 1, None, tmp_path) == w8          # w8a8 preferred
    assert find_trained("shiftresnet20", None, None, tmp_path) == w8       # E defaults to the model's (1)
    assert find_trained("shiftresnet20", 1, "w4a4", tmp_path).name == "a_w4.shiftprog"
    assert find_trained("shiftresnet20", 3, None, tmp_path).name == "c_e3.shiftprog"
    assert find_trained("shiftresnet20", 6, None, tmp_path) is None
    assert find_trained("shiftresnet56", 1, None, tmp_path) is None
    assert find_trained("shiftresnet20", 1, None, tmp_path / "missing") is None
    fm = put("a_fm.shiftprog", meta={"bits": "w8a8", "dataset": "fashion-mnist"})
    assert find_trained("shiftresnet20", 1, None, tmp_path) == w8          # CIFAR-10 preferred
    assert find_trained("shiftresnet20", 1, None, tmp_path, dataset="fashion-mnist") == fm
    assert find_trained("shiftresnet20", 1, None, tmp_path, dataset="cifar100") is None

    found, description = resolve_program("shiftresnet20", 1, "w8a8", None, trained_dir=tmp_path)
    assert description.startswith("trained program") and "b_w8.shiftprog" in description
    assert "cifar10" in description and "UNTRAINED" not in description
    assert found.meta["trained"] is True and found.meta["bits"] == "w8a8"


def test_weights_file_must_match_the_other_options(program_file):
    program, description = resolve_program(None, None, None, program_file)
    assert program.model == "shiftresnet20" and "UNTRAINED" in description
    assert resolve_program("shiftresnet20", 1, "w8a8", program_file)[0].model == "shiftresnet20"
    with pytest.raises(ModelError, match="shiftresnet20 program, not resnet20"):
        resolve_program("resnet20", None, None, program_file)
    with pytest.raises(ModelError, match="expansion 1, not 6"):
        resolve_program("shiftresnet20", 6, None, program_file)
    with pytest.raises(ModelError, match="w8a8 program, not w4a4"):
        resolve_program("shiftresnet20", None, "w4a4", program_file)
    with pytest.raises(ModelError, match="unknown model"):
        resolve_program("nonesuch", None, None, None)
    with pytest.raises(ModelError, match="no expansion parameter"):
        resolve_program("resnet20", 3, None, None)


def test_weights_file_errors(tmp_path):
    with pytest.raises(ModelError, match="no such weights file"):
        resolve_program("shiftresnet20", None, None, tmp_path / "missing.shiftprog")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ProgramError, match="neither a .shiftprog program nor a PyTorch checkpoint"):
        resolve_program("shiftresnet20", None, None, junk)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A w8a8 QAT checkpoint as python -m quant.train writes it (calibrated, not trained), and its net."""
    from quant.data import DATASETS
    from quant.qat import calibrate
    from quant.train import build_model, quantize

    info = DATASETS["cifar10"]
    kwargs = {"expansion": 1, "num_classes": 10, "in_channels": 3}
    torch.manual_seed(1)
    net = quantize(build_model("shiftresnet20", kwargs), "w8a8")
    calibrate(net, [torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    net.eval()
    meta = {"model": "shiftresnet20", "model_kwargs": kwargs, "bits": "w8a8", "scaling": "float",
            "dataset": "cifar10", "num_classes": 10, "in_channels": 3, "input_size": [32, 32],
            "mean": list(info.mean), "std": list(info.std), "classes": list(info.classes)}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": net.state_dict(), "meta": meta}, path)
    return path, net


def test_qat_checkpoint_is_exported_in_memory(checkpoint):
    from quant.export import to_program

    path, net = checkpoint
    program, description = resolve_program("shiftresnet20", 1, "w8a8", path)
    assert description == f"checkpoint {path}, exported in memory"
    assert program.meta["trained"] is True and program.meta["dataset"] == "cifar10"
    assert program.classes[3] == "cat" and len(program.mean) == 3
    direct = to_program(net, model="shiftresnet20", model_args=program.model_args)
    for a, b in zip(program.layers, direct.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


def test_float_checkpoint_is_refused(tmp_path):
    from quant.train import build_model

    kwargs = {"expansion": 1}
    meta = {"model": "shiftresnet20", "model_kwargs": kwargs, "bits": "float", "in_channels": 3,
            "input_size": [32, 32], "mean": [], "std": []}
    path = tmp_path / "float.pt"
    torch.save({"model": build_model("shiftresnet20", kwargs).state_dict(), "meta": meta}, path)
    with pytest.raises(ModelError, match="float checkpoint; the engine needs a QAT one"):
        resolve_program(None, None, None, path)


# ----------------------------------------------------------------------------- errors: exit 2, one line


def test_unknown_board(capsys):
    rc, out, err = run_cli(["--model", "shiftresnet20", "--board", "de0-nano", "--port", "/dev/ttyUSB9"], capsys)
    assert_one_line_error(rc, err, "unknown board 'de0-nano'", "ulx3s")


def test_board_without_port(capsys):
    rc, out, err = run_cli(["--model", "shiftresnet20", "--board", "ulx3s"], capsys)
    assert_one_line_error(rc, err, "--port")


def test_program_fpga_without_bitstream(capsys, tmp_path):
    rc, out, err = run_cli(["--model", "shiftresnet20", "--port", "/dev/ttyUSB9", "--program-fpga",
                            "--bitstream", tmp_path / "none.bit"], capsys)
    assert_one_line_error(rc, err, "no bitstream", "none.bit")


def test_missing_image_file(capsys, tmp_path):
    rc, out, err = run_cli(["--model", "shiftresnet20", "--image", tmp_path / "cat.png"], capsys)
    assert_one_line_error(rc, err, "cat.png", "no such file")


def test_wrong_image_size(capsys, tmp_path, program_file):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 48)).save(path)
    rc, out, err = run_cli(["--weights", program_file, "--image", path], capsys)
    assert_one_line_error(rc, err, "big.png", "64x48 RGB", "needs 32x32 RGB")


def test_wrong_image_channels(capsys, tmp_path, program_file):
    path = tmp_path / "grey.png"
    Image.new("L", (32, 32)).save(path)
    rc, out, err = run_cli(["--weights", program_file, "--image", path], capsys)
    assert_one_line_error(rc, err, "grey.png", "32x32 grayscale", "needs 32x32 RGB")


def test_unreadable_image(capsys, tmp_path, program_file):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 this is not a JPEG")
    rc, out, err = run_cli(["--weights", program_file, "--image", path], capsys)
    assert_one_line_error(rc, err, "broken.jpg", "cannot read it as an image")


def test_corrupt_program_file(capsys, tmp_path, program_file):
    bad = tmp_path / "bad.shiftprog"
    data = bytearray(program_file.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    rc, out, err = run_cli(["--model", "shiftresnet20", "--weights", bad], capsys)
    assert_one_line_error(rc, err, "bad.shiftprog")


def test_link_failure_is_one_line(capsys, program_file):
    from host.transport import TransportError

    @contextlib.contextmanager
    def dead(target, say):
        raise TransportError("cannot open serial port /dev/ttyUSB9: No such file or directory")
        yield

    rc, out, err = run_cli(["--weights", program_file, "--port", "/dev/ttyUSB9"], capsys, connect=dead)
    assert_one_line_error(rc, err, "/dev/ttyUSB9")
    assert "ulx3s on /dev/ttyUSB9" in out


def test_link_timeout_mid_run_names_the_board(capsys, program, program_file):
    from host.protocol import LinkError

    class Deaf(FakeAccelerator):
        def infer(self, x_q):
            raise LinkError("READ @0x00000000 (1 words): no valid reply after 4 attempts (last: timeout after 0.25 s)")

    rc, out, err = run_cli(["--weights", program_file, "--port", "tcp://127.0.0.1:5555"], capsys, Deaf(program))
    assert_one_line_error(rc, err, "tcp://127.0.0.1:5555: READ", "no valid reply")


def test_program_too_large_for_the_engine(capsys, program, program_file):
    compile_mod = pytest.importorskip("host.compile")

    def refuse(program, params):
        raise compile_mod.CompileError("layer stem: 27 gathered channels need 2 table words, the engine has 1")

    rc = run.main(["--weights", str(program_file)], connect=fake_connect(FakeAccelerator(program)),
                  compile_program=refuse)
    out, err = capsys.readouterr()
    assert_one_line_error(rc, err, "layer stem: 27 gathered channels")


def test_ctrl_c_exits_130_quietly(capsys, program_file):
    @contextlib.contextmanager
    def interrupted(target, say):
        raise KeyboardInterrupt
        yield

    rc, out, err = run_cli(["--weights", program_file], capsys, connect=interrupted)
    assert rc == 130 and err == ""


def test_bad_argument_is_one_line(capsys):
    rc, out, err = run_cli(["--model", "shiftresnet20", "--top-k", "many"], capsys)
    assert_one_line_error(rc, err, "--top-k")


# ----------------------------------------------------------------------------- a run, with a fake board


def test_bit_exact_run_and_report(capsys, tmp_path, program, program_file):
    acc = FakeAccelerator(program)
    samples = sorted((REPO / "host" / "samples").glob("cifar10_*.jpg"))[:2]
    report_path = tmp_path / "run.json"
    rc, out, err = run_cli(["--weights", program_file, "--image", *samples, "--top-k", "3", "--fmax", "100",
                            "--report", report_path], capsys, acc)
    assert rc == 0, err
    assert out.count("BIT-EXACT") == 3  # two images and the summary
    assert "UNTRAINED weights" in out and "simulated board" in out
    assert "MISMATCH" not in out
    assert "per layer as above" in out  # same cycles for the second image: the table is printed once

    report = json.loads(report_path.read_text())
    assert report["schema"] == run.REPORT_SCHEMA and report["all_bit_exact"] is True
    assert report["clock"] == {"mhz": 100.0, "source": "--fmax", "assumed": False, "note": ""}
    assert report["engine"]["rows"] == ROWS and report["model"]["trained"] is False
    macs = layer_macs(program)
    for path, image in zip(samples, report["images"]):
        assert image["check"] == "bit-exact" and image["mismatch"] is None
        # the engine saw the image as PIL reads it, normalised and quantised by the golden model
        assert image["logits"] == image["golden_logits"] == sample_logits(program, path).tolist()
        assert [x["macs"] for x in image["layers"]] == macs
        for x in image["layers"]:
            assert x["utilisation"] == pytest.approx(x["macs"] / (ROWS * COLS * x["cycles"]))
        cycles = [m // (ROWS * COLS) + 11 for m in macs]
        assert image["total_cycles"] == sum(cycles) + FakeAccelerator.OVERHEAD
        assert image["utilisation"] == pytest.approx(sum(macs) / (ROWS * COLS * image["total_cycles"]))
        assert image["fps"] == pytest.approx(100e6 / image["total_cycles"])
        assert len(image["top_k"]) == 3
        assert image["top_k"][0]["logit"] == max(image["logits"])
        assert image["label"] is None  # an untrained program has no class names
    assert f"{100e6 / report['images'][0]['total_cycles']:,.1f} frames/s" in out
    assert "(between layers)" in out and f"{report['images'][0]['total_cycles']:,}" in out


def test_mismatch_exits_1(capsys, tmp_path, program, program_file):
    acc = FakeAccelerator(program, corrupt=4)
    report_path = tmp_path / "run.json"
    rc, out, err = run_cli(["--weights", program_file, "--report", report_path], capsys, acc)
    assert rc == 1, err
    image = json.loads(report_path.read_text())["images"][0]
    expected = image["golden_logits"][4]
    assert f"MISMATCH: 1 of 10 logits differ; first at index 4: expected {expected}, got {expected + 1}" in out
    assert image["check"] == "mismatch" and image["mismatch"]["first_index"] == 4


def test_default_input_is_the_first_fitting_sample(capsys, program, program_file):
    acc = FakeAccelerator(program)
    rc, out, err = run_cli(["--weights", program_file, "--no-check"], capsys, acc)
    assert rc == 0 and "check     skipped" in out
    first = sorted((REPO / "host" / "samples").glob("cifar10_*.jpg"))[0]
    assert first.name in out
    assert np.array_equal(golden.run(program, torch.as_tensor(acc.inputs[0]))[program.output].flatten().numpy(),
                          sample_logits(program, first))


def test_synthetic_input_when_no_sample_fits(monkeypatch, capsys, program, program_file, tmp_path):
    monkeypatch.setattr(run, "SAMPLES_DIR", tmp_path)
    acc = FakeAccelerator(program)
    rc, out, err = run_cli(["--weights", program_file], capsys, acc)
    assert rc == 0 and "synthetic image (uniform random pixels, seed 0)" in out
    expected = golden.quantize_input(program, np.random.default_rng(0).random((3, 32, 32))).numpy()
    assert np.array_equal(acc.inputs[0], expected)


def test_label_from_the_file_name(capsys, checkpoint):
    path, _ = checkpoint
    program, _ = resolve_program(None, None, None, path)
    cat = REPO / "host" / "samples" / "cifar10_test_0000_cat.jpg"
    rc, out, err = run_cli(["--weights", path, "--image", cat, "--top-k", "10"], capsys, FakeAccelerator(program))
    assert rc == 0, err
    assert "label cat (from the file name)" in out and "<- label" in out
    assert "UNTRAINED" not in out


def _build_report(path, rows, cols, fmax=151.33, core="soc", clock_mhz=150.0, met=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": "shiftfpga-build-report/1", "core": core, "timing_met": met,
                                "engine": {"rows": rows, "cols": cols, "multipliers": rows * cols},
                                "clock": {"target_mhz": clock_mhz},
                                "engine_fmax_mhz": fmax, "files": {"bitstream": "top.bit"}}))


def test_fps_clock_from_build_report_or_assumed(monkeypatch, capsys, tmp_path, program, program_file):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "REPO", tmp_path)  # no build/ulx3s/report.json of the real checkout
    report_path = tmp_path / "run.json"

    def clock(*extra):
        rc, out, err = run_cli(["--weights", program_file, "--report", report_path, *extra], capsys,
                               FakeAccelerator(program))
        assert rc == 0, err
        return json.loads(report_path.read_text())["clock"], out

    c, out = clock()
    assert c["assumed"] and c["mhz"] == 150.0 and "no build report: FPS at an assumed 150 MHz" in out

    _build_report(tmp_path / "build" / "ulx3s" / "report.json", ROWS, COLS)
    c, out = clock()   # timing met: FPS at the clock the bitstream runs at, not at the Fmax
    assert not c["assumed"] and c["mhz"] == 150.0 and "build/ulx3s/report.json" in c["source"]

    _build_report(tmp_path / "build" / "ulx3s" / "report.json", ROWS, COLS, fmax=42.5, met=False)
    c, out = clock()   # timing failed: only the achieved Fmax is honest
    assert not c["assumed"] and c["mhz"] == 42.5 and "FAILED" in c["source"]

    probe = tmp_path / "probe.json"
    _build_report(probe, ROWS, COLS, core="probe")
    c, out = clock("--build-report", probe)
    assert c["assumed"] and "not of the SoC" in out

    other = tmp_path / "other.json"
    _build_report(other, 12, 13, fmax=107.2)
    c, out = clock("--build-report", other)
    assert c["assumed"] and c["mhz"] == 150.0 and "12x13 engine, not this 8x8 one" in out

    c, out = clock("--build-report", other, "--fmax", "50")
    assert c == {"mhz": 50.0, "source": "--fmax", "assumed": False, "note": ""}

    rc, out, err = run_cli(["--weights", program_file, "--build-report", tmp_path / "nope.json"], capsys,
                           FakeAccelerator(program))
    assert_one_line_error(rc, err, "no build report", "nope.json")


# ----------------------------------------------------------------------------- formatting helpers


def test_report_helpers():
    assert rep.compare_logits([1, 2, 3], np.array([1, 2, 3])) is None
    m = rep.compare_logits([1, 2, 3, 4], [1, 5, 3, 0])
    assert (m.index, m.expected, m.got, m.count) == (1, 2, 5, 2)
    assert "first at index 1: expected 2, got 5" in m.describe()
    assert "returned 2 logits, the golden model 3" in rep.compare_logits([1, 2, 3], [1, 2]).describe()

    top = rep.top_k([10, 30, 20], 0.1, ["a", "b"], 2)
    assert [t["index"] for t in top] == [1, 2] and [t["class"] for t in top] == ["b", "class 2"]
    p = np.exp(np.array([1.0, 3.0, 2.0]))
    assert top[0]["probability"] == pytest.approx(p[1] / p.sum())

    rows = rep.layer_rows(["l0", "l1"], [100, 0], [3200, 5], 4, 8)
    assert rows[0]["utilisation"] == pytest.approx(1.0) and rows[1]["utilisation"] is None

    classes = ["T-shirt/top", "Ankle boot", "cat"]
    assert rep.label_from_name("fashion-mnist_test_00000_ankle-boot.png", classes) == 1
    assert rep.label_from_name("x/cifar10_test_0000_cat.jpg", classes) == 2
    assert rep.label_from_name("t-shirt-top.png", classes) == 0
    assert rep.label_from_name("holiday.jpg", classes) is None


# ----------------------------------------------------------------------------- as a script


def test_script_help_and_imports():
    """``python host/run.py``: host/ must not shadow the repo's ``models`` package."""
    help_ = subprocess.run([sys.executable, "host/run.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0
    for option in ("--model", "--weights", "--image", "--port", "--board", "--program-fpga", "--top-k",
                   "--report", "--no-check", "--fmax", "UNTRAINED", "exit status"):
        assert option in help_.stdout
    bad = subprocess.run([sys.executable, "host/run.py", "--model", "nonesuch"], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model 'nonesuch'"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_simulated_board_end_to_end(tmp_path, program_file):
    """The default a new user gets: the real compiler, driver and simulated board (Verilator)."""
    pytest.importorskip("hw.soc")
    report_path = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "host/run.py", "--weights", str(program_file), "--report", str(report_path),
                           "--image", "host/samples/cifar10_test_0000_cat.jpg"], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated board" in done.stdout and "BIT-EXACT" in done.stdout
    image = json.loads(report_path.read_text())["images"][0]
    assert image["check"] == "bit-exact" and image["total_cycles"] >= sum(x["cycles"] for x in image["layers"]) > 0
