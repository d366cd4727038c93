"""The whole engine (sequencer + shift unit + tile feeder + array + output stage) against the golden model.

Small engines in Amaranth's simulator (``sim.pysim_bus``), driven by the same
host code as a real board (:mod:`host.compile`, :mod:`host.accelerator`).
Each run compiles a random program (3x3 im2col stem, a CSC-like block with a
shift, a strided projection and a residual, global pool, classifier; see
``quant.synthetic.random_program``) with ``keep_all`` so that every tensor
the engine stores stays in memory, and compares every word of every one of
them with ``quant.golden.run``. The CSC-like block runs as one fused pass
(expand into a ring of mid pixels, shift + reduce behind it), with the
default ring and with the smallest one (one tile), and as two passes.
Reproduce a failure with the seed in its message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from host.accelerator import Accelerator
from host.compile import CompileError, compile_program, plan_passes
from hw.engine import Engine
from hw.engine_params import EngineParams
from quant import golden
from quant.synthetic import random_program
from sim.harness import seed_from_env
from sim.pysim_bus import run_with_bus

# max_gather 48: 12 / 6 tile-buffer words per pixel at 4 / 8 lanes, not a power of two (tile_words rounds)
TINY = dict(act_words=2048, weight_words=2048, max_layers=8, sched_words=256, table_words=256,
            logit_words=8, max_width=8, max_height=8, max_cin=32, max_gather=48, radius=2, max_cout=64)


def first_mismatch(program, expected: dict, got: dict) -> str | None:
    """The first word of a tensor in ``got`` (what the engine stored) that differs from ``expected``."""
    for name, out in got.items():
        ref = expected[name].numpy()
        if out.shape != ref.shape:
            return f"tensor {name!r}: shape {out.shape}, expected {ref.shape}"
        bad = np.argwhere(out != ref)
        if len(bad):
            y, x, c = bad[0]
            writer = next((layer.name for layer in program.layers if layer.output == name), "input")
            return (f"layer {writer!r} tensor {name!r}: {len(bad)} words differ, first at pixel ({y}, {x}) "
                    f"channel {c}: expected {ref[y, x, c]}, got {out[y, x, c]}")
    return None


def run_program(params: EngineParams, program, image: torch.Tensor, block_ram: str = "auto", **compile_args):
    def host(link):
        acc = Accelerator(link, run_timeout=1e9)
        compiled = compile_program(program, acc.params, keep_all=True, **compile_args)
        acc.load(compiled)
        return acc.infer(golden.quantize_input(program, image).numpy(), keep_all=True)

    return run_with_bus(Engine(params, block_ram=block_ram), host)


#: compile arguments per way of running the CSC block, for an engine's params
PASSES = {"fused": lambda p: {}, "fused_ring1": lambda p: {"ring_pixels": p.rows},   # the smallest ring
          "unfused": lambda p: {"fuse": False}}


@pytest.mark.parametrize("passes", list(PASSES))
@pytest.mark.parametrize("shape", [(2, 4, 4), (3, 8, 4), (4, 8, 8)], ids=lambda s: "P{}xQ{}_L{}".format(*s))
def test_engine_random_programs(shape, passes):
    check_random_programs(shape, passes)


@pytest.mark.parametrize("passes", ["fused", "unfused"])
def test_engine_on_dp16kd_block_rams(passes):
    """The engine as built for ECP5: the sliced memories (activations, weights, descriptors, channel
    tables, the shift unit's ring banks) from DP16KD primitives with their output registers,
    simulated on hw.dp16kd.DP16KDModel."""
    check_random_programs((3, 8, 4), passes, block_ram="model")


def check_random_programs(shape, passes, block_ram="auto"):
    """Two random programs on an engine of ``shape`` (P, Q, L); every stored word against the golden model."""
    rows, cols, lanes = shape
    params = EngineParams(rows=rows, cols=cols, lanes=lanes, **TINY)
    compile_args = PASSES[passes](params)
    seed = seed_from_env()
    for k in range(2):
        s = seed + k
        rng = np.random.default_rng(s)
        size = int(rng.integers(3, 8))
        program = random_program(seed=s, size=size, channels=int(rng.choice([4, 8, 12])),
                                 classes=int(rng.integers(2, 12)), in_channels=int(rng.integers(1, 4)),
                                 mid_signed=bool(rng.integers(2)))
        image = torch.rand(program.tensors[program.input].shape[2], size, size,
                           generator=torch.Generator().manual_seed(s))
        result = run_program(params, program, image, block_ram=block_ram, **compile_args)
        problem = first_mismatch(program, golden.run(program, golden.quantize_input(program, image)),
                                 result.outputs)
        assert problem is None, f"seed {s} (SHIFTFPGA_SEED={s}), engine {shape}, {passes}: {problem}"
        assert np.array_equal(result.logits, golden.predict(program, image).numpy())
        n_passes = len(program.layers) - (passes != "unfused")      # the CSC block fuses into one pass
        assert len(plan_passes(program, params, **compile_args)) == n_passes
        assert len(result.layer_cycles) == n_passes and all(c > 0 for c in result.layer_cycles)
        assert result.total_cycles >= sum(result.layer_cycles)


def test_compile_rejects_what_does_not_fit():
    program = random_program(seed=0, size=8, channels=8)
    small = EngineParams(rows=2, cols=4, lanes=4, **{**TINY, "act_words": 64})
    with pytest.raises(CompileError, match="activations do not fit"):
        compile_program(program, small)
    narrow = EngineParams(rows=2, cols=4, lanes=4, **{**TINY, "max_width": 4, "max_height": 4})
    with pytest.raises(CompileError, match="width"):
        compile_program(program, narrow)
    few = EngineParams(rows=2, cols=4, lanes=4, **{**TINY, "weight_words": 16})
    with pytest.raises(CompileError, match="weights do not fit"):
        compile_program(program, few)


def test_tensor_memory_is_reused():
    """Without keep_all, tensors whose lifetimes do not overlap share activation words."""
    program = random_program(seed=1, size=8, channels=8)
    params = EngineParams(rows=2, cols=4, lanes=4, **TINY)
    shared = compile_program(program, params)
    separate = compile_program(program, params, keep_all=True)
    peak = lambda c: max(p.base + p.words for p in c.places.values() if p.region == 5)  # noqa: E731
    assert peak(shared) < peak(separate)
    # a pass's output never overlaps its live inputs (nor a fused pass's mid ring)
    for ps in plan_passes(program, params):
        out = shared.places[ps.layer.output]
        for name in (ps.input, ps.layer.residual.tensor if ps.layer.residual else None):
            if name and out.region == shared.places[name].region:
                src = shared.places[name]
                assert out.base + out.words <= src.base or src.base + src.words <= out.base


@pytest.mark.parametrize("block_ram", ["auto", "model"])
def test_host_reads_back_every_memory_region(block_ram):
    """Bus writes then reads of every writable region (bursts and single words, regions interleaved).

    Entries wider than 32 bits take ``parts_for(width)`` words (a power of two), least significant
    first; bits beyond the entry's width read back as 0.
    """
    from hw.engine_params import DESC_WORDS, Region, parts_for, region_addr
    from hw.output_stage import TableEntry

    params = EngineParams(rows=2, cols=4, lanes=4, **TINY)
    engine = Engine(params, block_ram=block_ram)
    widths = {Region.DESC: 32, Region.SCHED: engine.shift.slot_layout.size, Region.TABLE: TableEntry.size,
              Region.WEIGHT: 8 * params.cols, Region.ACT: 8 * params.lanes, Region.LOGITS: 32 * params.lanes}
    depths = {Region.DESC: params.max_layers * DESC_WORDS, Region.SCHED: params.sched_words, Region.TABLE: params.table_words,
              Region.WEIGHT: params.weight_words, Region.ACT: params.act_words, Region.LOGITS: params.logit_words}
    rng = np.random.default_rng(11)
    stored = {}    # (region, word offset) -> expected word

    def host(link):
        for region, width in widths.items():
            k = parts_for(width)
            entry = int(rng.integers(0, depths[region] - 3))
            words = [int(w) for w in rng.integers(0, 1 << 32, size=3 * k, dtype=np.uint64)]
            link.write(region_addr(region, entry * k), words)
            for i, w in enumerate(words):
                bits = min(32, max(0, width - 32 * (i % k)))     # of this part of the entry
                stored[(region, entry * k + i)] = w & ((1 << bits) - 1)
        # bursts, region by region, then single words in a shuffled order across regions
        for region in widths:
            offsets = sorted(o for r, o in stored if r == region)
            got = link.read(region_addr(region, offsets[0]), len(offsets))
            assert got == [stored[(region, o)] for o in offsets], f"region {region}"
        keys = list(stored)
        for i in rng.permutation(len(keys)):
            region, offset = keys[i]
            assert link.read(region_addr(region, offset), 1) == [stored[keys[i]]], f"region {region} word {offset}"
        return True

    assert run_with_bus(engine, host)
