"""Host compiler (host/compile.py) and engine parameters (hw/engine_params.py): packing and layout rules."""

import numpy as np
import pytest
from amaranth.lib import data

from host.compile import (CompileError, compile_program, pack_activation, pack_entries, plan_passes,
                          unpack_activation, unpack_logits)
from hw.engine_params import DESC_WORDS, EngineParams, Region, descriptor_layout, parts_for
from quant.synthetic import random_program

SMALL = EngineParams(rows=2, cols=4, lanes=4, act_words=2048, weight_words=2048, max_layers=8, sched_words=256,
                     table_words=256, logit_words=8, max_width=8, max_height=8, max_cin=32, max_gather=64,
                     radius=2, max_cout=32)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("lanes", [4, 16])
def test_activation_packing_round_trips(signed, lanes):
    rng = np.random.default_rng(lanes)
    lo, hi = (-128, 127) if signed else (0, 255)
    q = rng.integers(lo, hi + 1, size=(3, 5, 7))
    entries = pack_activation(q, lanes)
    assert len(entries) == 3 * 5 * -(-7 // lanes)
    assert np.array_equal(unpack_activation(entries, q.shape, lanes, signed), q)
    # channel c of a pixel is byte c % lanes of word c // lanes; padding lanes are zero
    assert entries[0] & 0xFF == q[0, 0, 0] & 0xFF
    assert entries[0] >> (8 * 7) == 0 if lanes == 16 else True


def test_entries_split_into_bus_words_least_significant_first():
    assert parts_for(32) == 1 and parts_for(33) == 2 and parts_for(54) == 2 and parts_for(100) == 4
    assert pack_entries([0x1_2345_6789_ABCD], 54) == [0x6789ABCD, 0x12345]
    assert pack_entries([-1], 8) == [0xFF]


def test_logits_unpack_signed_words():
    e = (0xFFFFFFFF) | (5 << 32)
    assert unpack_logits([e], (1, 1, 2), 2).reshape(-1).tolist() == [-1, 5]


def test_params_round_trip_and_validation():
    assert EngineParams.from_words(SMALL.to_words()) == SMALL
    with pytest.raises(ValueError, match="lanes"):
        EngineParams(cols=16, lanes=3)
    with pytest.raises(ValueError, match="max_cout"):
        EngineParams(max_cout=100)
    layout = descriptor_layout(SMALL, SMALL.shift_unit(for_host=True).cfg_layout)
    assert layout.size <= 32 * DESC_WORDS


def test_weights_are_laid_out_in_feeder_order():
    program = random_program(seed=3, size=6, channels=8)
    compiled = compile_program(program, SMALL, fuse=False)
    weights = dict(compiled.uploads)[Region.WEIGHT << 24]
    k = parts_for(8 * SMALL.cols)
    layer = program.layers[1]                 # the first layer after the stem
    c_out, c_g = layer.weight.shape
    base = sum(-(-lay.weight.shape[0] // SMALL.cols) * lay.weight.shape[1] for lay in program.layers[:1])
    for g in range(-(-c_out // SMALL.cols)):
        for ci in range(c_g):
            word = weights[(base + g * c_g + ci) * k]
            for q in range(SMALL.cols):
                o = g * SMALL.cols + q
                want = int(layer.weight[o, ci]) if o < c_out else 0
                byte = (word >> (8 * q)) & 0xFF
                assert byte - 256 * (byte > 127) == want


def test_compile_errors_are_one_line():
    program = random_program(seed=0, size=8, channels=8)
    tiny = EngineParams(**{**SMALL.as_dict(), "max_layers": 2})
    with pytest.raises(CompileError) as exc:
        compile_program(program, tiny)
    assert "\n" not in str(exc.value) and "layers" in str(exc.value)


def _descriptor(compiled, index):
    layout = descriptor_layout(compiled.params, compiled.params.shift_unit(for_host=True).cfg_layout)
    words = dict(compiled.uploads)[Region.DESC << 24][index * DESC_WORDS:(index + 1) * DESC_WORDS]
    bits = sum(w << (32 * k) for k, w in enumerate(words))
    return data.Const(layout, bits & ((1 << layout.size) - 1))


def test_csc_expand_fuses_into_its_reduce_pass():
    program = random_program(seed=3, size=6, channels=8)      # expand 8 -> 16 (mid), project 16 -> 8
    names = [ps.name for ps in plan_passes(program, SMALL)]
    assert names == ["stem", "shortcut", "expand+project", "pool", "classifier"]
    assert [ps.name for ps in plan_passes(program, SMALL, fuse=False)] == [lay.name for lay in program.layers]
    compiled = compile_program(program, SMALL, keep_all=True)
    assert compiled.layer_names == names
    assert "mid" not in compiled.places                        # never stored
    ring = compiled.rings["mid@ring"]
    assert ring.words == 12 * 4                                 # default: two rows of 6 -> 12 pixels, 4 words each
    d = _descriptor(compiled, 2)
    L, P = SMALL.lanes, SMALL.rows
    assert d.fused == 1 and d.in_base == ring.base and d.ring_end == ring.base + ring.words
    assert d.ring_pixels == 12 and d.a_in_base == compiled.places["stem"].base
    assert (d.a_c_gather, d.a_c_out, d.c_gather, d.c_out) == (8, 16, 16, 8)
    assert d.a_table_off % L == 0 and d.a_table_off >= d.c_out and d.table_len == d.a_table_off + 16
    assert d.a_tile_words == P * 4 and d.a_out_beats == 36 * 4
    assert d.out_beats == 9 * 2 + 36 * 4                       # the block's 3x3x8 output + the mid words
    # the expand half's weights follow the reduce half's
    assert d.a_w_base == d.w_base + 2 * 16
    plain = _descriptor(compile_program(program, SMALL, fuse=False), 1)
    assert plain.fused == 0 and plain.ring_end == SMALL.act_words and plain.table_len == plain.c_out


def test_fusion_needs_the_mid_tensor_to_have_one_reader_and_the_tables_to_fit():
    program = random_program(seed=3, size=6, channels=8)
    no_room = EngineParams(**{**SMALL.as_dict(), "max_cout": 16})      # 8 + 16 table entries > 16
    assert len(plan_passes(program, no_room)) == len(program.layers)
    program.layers[2].input = "mid"                                      # the shortcut now reads the mid too
    assert len(plan_passes(program, SMALL)) == len(program.layers)


def test_ring_size_must_be_whole_tiles():
    program = random_program(seed=3, size=6, channels=8)
    with pytest.raises(CompileError, match="multiple"):
        compile_program(program, SMALL, ring_pixels=3)
