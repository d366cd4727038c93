"""cocotb testbench of ``hw.output_stage.OutputStage`` against ``quant.numerics``.

Environment (set by ``sim/test_output_stage.py``): ``TB_STAGE`` (JSON constructor
arguments), ``TB_CONFIGS`` (number of random layer configurations),
``SHIFTFPGA_SEED``.

Every configuration is a random layer output: C_out not a multiple of the lane
count, a random pixel count, a fresh per-channel table (m 1..65535 with the
extremes, s 0..47, random biases), a random mode (QUANT / RAW / POOL), random
clamps (ReLU, int8, uint8, narrow ranges: both clamp ends are hit because the
shifts are chosen so that results straddle the range), with and without the
residual stream. Random gaps on ``i``, ``r`` and ``tbl``, random back-pressure
on ``o``; every output word is compared with ``quant.numerics``.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import torch
from cocotb.triggers import ReadOnly, RisingEdge

from quant.numerics import MULT_BITS, SHIFT_MAX, global_avgpool, requantize, residual_add
from sim.stream import StreamSink, StreamSource, reset, start_clock
from sim.tb_systolic import pack, unpack

CLAMPS = [(0, 255), (-128, 127), (0, 127), (-128, 0), (-256, 255), (0, 0), (-3, 5)]


def _shift_for(magnitude_bits: int, m: int, target_bits: int, rng: random.Random) -> int:
    s = magnitude_bits + m.bit_length() - target_bits + rng.randint(-2, 2)
    return max(0, min(SHIFT_MAX, s))


def _multiplier(rng: random.Random) -> int:
    return rng.choice([1, (1 << MULT_BITS) - 1, rng.randint(1, (1 << MULT_BITS) - 1),
                       rng.randint(1 << (MULT_BITS - 1), (1 << MULT_BITS) - 1)])


def _clamp_pair(rng: random.Random):
    if rng.random() < 0.8:
        return rng.choice(CLAMPS)
    lo = rng.randint(-256, 255)
    return lo, rng.randint(lo, 255)


def _random_config(rng: random.Random, idx: int, N: int):
    modes = ["QUANT", "QUANT", "RAW", "POOL"]
    mode = modes[idx % 4] if idx < 8 else rng.choice(modes)
    c_out = rng.choice([rng.randint(1, N), rng.randint(1, 4 * N + 3)])
    npix = rng.choice([1, rng.randint(1, 4), rng.randint(1, 12)])
    a_bits = rng.choice([0, 3, 8, 12, 16, 20, 24, 28, 30])
    b_bits = rng.choice([0, 4, 10, 16, 24])
    acc_max = (1 << 31) - 1 - (1 << b_bits)
    amax = min(acc_max, 1 << a_bits)
    acc = [[rng.choice([rng.randint(-amax, amax), amax, -amax]) for _ in range(c_out)] for _ in range(npix)]
    bias = [rng.randint(-(1 << b_bits), 1 << b_bits) for _ in range(c_out)]
    mul = [_multiplier(rng) for _ in range(c_out)]
    sh = [_shift_for(max(a_bits, b_bits), mul[c], rng.choice([7, 8, 9]), rng) for c in range(c_out)]
    if rng.random() < 0.1:
        sh = [rng.choice([0, SHIFT_MAX]) for _ in range(c_out)]
    lo, hi = _clamp_pair(rng)
    res_en = mode != "RAW" and rng.random() < 0.6 or (mode == "RAW" and rng.random() < 0.3)
    res_signed = rng.random() < 0.5
    rlo, rhi = (-128, 127) if res_signed else (0, 255)
    resid = [[rng.randint(rlo, rhi) for _ in range(c_out)] for _ in range(npix)]
    res_m = _multiplier(rng)
    # mostly residuals of about the output's size; some far beyond it, which must saturate
    res_s = _shift_for(8, res_m, rng.choice([6, 7, 8, 6, 7, 8, 11, 16]), rng)
    res_lo, res_hi = _clamp_pair(rng)
    pool_m = _multiplier(rng)
    pool_s = _shift_for(8 + npix.bit_length(), pool_m, rng.choice([7, 8]), rng)
    pool_lo, pool_hi = _clamp_pair(rng)
    # alt beats (the expand half of a fused CSC pass): own channels after the layer's, own clamp,
    # no residual, no pool, interleaved with the layer's beats
    n_alt = rng.choice([0, 0, rng.randint(1, 2 * N + 1)]) if mode != "RAW" else 0
    alt_pix = rng.randint(1, 6)
    alt_lo, alt_hi = _clamp_pair(rng)
    alt_acc = [[rng.randint(-amax, amax) for _ in range(n_alt)] for _ in range(alt_pix)]
    alt_bias = [rng.randint(-(1 << b_bits), 1 << b_bits) for _ in range(n_alt)]
    alt_m = [_multiplier(rng) for _ in range(n_alt)]
    alt_s = [_shift_for(max(a_bits, b_bits), alt_m[c], 8, rng) for c in range(n_alt)]
    return dict(mode=mode, c_out=c_out, npix=npix, acc=acc, bias=bias, m=mul, s=sh, lo=lo, hi=hi,
                res_en=res_en, resid=resid, res_m=res_m, res_s=res_s, res_lo=res_lo, res_hi=res_hi,
                pool_m=pool_m, pool_s=pool_s, pool_lo=pool_lo, pool_hi=pool_hi,
                n_alt=n_alt, alt_pix=alt_pix, alt_lo=alt_lo, alt_hi=alt_hi, alt_acc=alt_acc,
                alt_bias=alt_bias, alt_m=alt_m, alt_s=alt_s)


def _golden_alt(c):
    """Expected alt values ``[alt_pix, n_alt]``: requantise with the alt clamp, nothing else."""
    acc = torch.tensor(c["alt_acc"], dtype=torch.int64).view(c["alt_pix"], c["n_alt"]) + \
        torch.tensor(c["alt_bias"], dtype=torch.int64)
    return requantize(acc, torch.tensor(c["alt_m"]), torch.tensor(c["alt_s"]), c["alt_lo"], c["alt_hi"])


def _golden(c):
    """Expected values ``[npix, c_out]`` (QUANT, RAW) or ``[c_out]`` (POOL), from quant.numerics."""
    acc = torch.tensor(c["acc"], dtype=torch.int64) + torch.tensor(c["bias"], dtype=torch.int64)
    if c["mode"] == "RAW":
        return acc
    y = requantize(acc, torch.tensor(c["m"]), torch.tensor(c["s"]), c["lo"], c["hi"])
    if c["res_en"]:
        y = residual_add(y, torch.tensor(c["resid"]), c["res_m"], c["res_s"], c["res_lo"], c["res_hi"])
    if c["mode"] == "QUANT":
        return y
    return global_avgpool(y.view(1, c["npix"], c["c_out"]), c["pool_m"], c["pool_s"], c["pool_lo"], c["pool_hi"])


async def _wait_idle(dut):
    while True:
        await ReadOnly()
        if not dut.busy.value:
            break
        await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)


@cocotb.test()
async def output_stage_random_layers(dut):
    stage_args = json.loads(os.environ["TB_STAGE"])
    n_cfg = int(os.environ.get("TB_CONFIGS", "100"))
    seed = int(os.environ["SHIFTFPGA_SEED"])
    rng = random.Random(seed)
    dut._log.info(f"seed={seed} stage={stage_args} configurations={n_cfg}")

    from hw.output_stage import ConfigLayout, Mode, OutputStage
    ref = OutputStage(**stage_args)
    N = ref.lanes
    il, ol, tl, rl = ref.input_layout, ref.output_layout, ref.table_layout, ref.residual_layout

    start_clock(dut.clk)
    dut.cfg.value = 0
    await reset(dut.clk, dut.rst)
    counts = {"QUANT": 0, "RAW": 0, "POOL": 0, "res": 0, "lo_hits": 0, "hi_hits": 0}
    for idx in range(n_cfg):
        c = _random_config(rng, idx, N)
        c_out, npix, mode = c["c_out"], c["npix"], c["mode"]
        counts[mode] += 1
        counts["res"] += int(c["res_en"] and mode != "RAW")
        gold = _golden(c)
        groups = list(range(0, c_out, N))
        n_alt = c["n_alt"]
        alt_off = groups[-1] + N                     # the alt channels' first table entry
        alt_groups = list(range(0, n_alt, N))
        counts["alt"] = counts.get("alt", 0) + int(n_alt > 0)

        # table
        tbl_words = []
        for ch in range(groups[-1] + N + (alt_groups[-1] + N if n_alt else 0)):
            if ch < c_out:
                e = {"m": c["m"][ch], "s": c["s"][ch], "bias": c["bias"][ch]}
            elif alt_off <= ch < alt_off + n_alt:
                a = ch - alt_off
                e = {"m": c["alt_m"][a], "s": c["alt_s"][a], "bias": c["alt_bias"][a]}
            else:
                e = {"m": rng.randint(0, 65535), "s": rng.randint(0, 47), "bias": rng.getrandbits(32)}
            tbl_words.append(pack(tl, {"chan": ch, "entry": e}))
        rng.shuffle(tbl_words)
        await StreamSource(dut.clk, dut.tbl__valid, dut.tbl__ready, dut.tbl__payload, rng,
                           gap_prob=0.2).send(tbl_words)
        dut.cfg.value = pack(ConfigLayout, {
            "mode": Mode[mode].value, "lo": c["lo"], "hi": c["hi"], "res_en": int(c["res_en"]),
            "res_m": c["res_m"], "res_s": c["res_s"], "res_lo": c["res_lo"], "res_hi": c["res_hi"],
            "pool_m": c["pool_m"], "pool_s": c["pool_s"], "pool_lo": c["pool_lo"], "pool_hi": c["pool_hi"],
            "alt_lo": c["alt_lo"], "alt_hi": c["alt_hi"],
        })

        # the alt beats, each with its residual word (consumed, not added) and its expected word
        alt_items = []
        if n_alt:
            gold_alt = _golden_alt(c)
            for p in range(c["alt_pix"]):
                for g in alt_groups:
                    lanes = [g + k for k in range(N)]
                    ok = [ch < n_alt for ch in lanes]
                    mask = sum(1 << k for k in range(N) if ok[k])
                    beat = pack(il, {
                        "acc": [c["alt_acc"][p][ch] if v else rng.getrandbits(32) for ch, v in zip(lanes, ok)],
                        "chan": alt_off + g, "mask": mask, "alt": 1,
                        "pool_first": rng.getrandbits(1), "pool_last": rng.getrandbits(1), "last": 0,
                    })
                    word = pack(rl, [rng.randint(-128, 255) for _ in range(N)])
                    exp = {"data": [int(gold_alt[p, ch]) if v else None for ch, v in zip(lanes, ok)],
                           "chan": alt_off + g, "mask": mask, "last": 0, "pixel": f"alt {p}"}
                    alt_items.append((beat, word, exp))

        beats, resid, expected = [], [], []

        def put_alt(n):
            for _ in range(n):
                if alt_items:
                    beat, word, exp = alt_items.pop(0)
                    beats.append(beat)
                    resid.append(word)
                    expected.append(exp)

        for p in range(npix):
            for g in groups:
                lanes = [g + k for k in range(N)]
                ok = [ch < c_out for ch in lanes]
                beats.append(pack(il, {
                    "acc": [c["acc"][p][ch] if v else rng.getrandbits(32) for ch, v in zip(lanes, ok)],
                    "chan": g, "mask": sum(1 << k for k in range(N) if ok[k]),
                    "pool_first": int(p == 0), "pool_last": int(p == npix - 1),
                    "last": int(p == npix - 1 and g == groups[-1]),
                }))
                resid.append(pack(rl, [c["resid"][p][ch] if v else rng.randint(-128, 255) for ch, v in zip(lanes, ok)]))
                if mode != "POOL" or p == npix - 1:
                    vals = [int(gold[ch] if mode == "POOL" else gold[p, ch]) if v else None for ch, v in zip(lanes, ok)]
                    expected.append({"data": vals, "chan": g, "mask": sum(1 << k for k in range(N) if ok[k]),
                                     "last": int(p == npix - 1 and g == groups[-1]), "pixel": p})
                put_alt(rng.choice([0, 0, 1, 2]))
        put_alt(len(alt_items))
        for e in expected:
            for v in e["data"]:
                if v is not None and mode != "RAW" and not str(e["pixel"]).startswith("alt"):
                    lo, hi = (c["pool_lo"], c["pool_hi"]) if mode == "POOL" else \
                        ((c["res_lo"], c["res_hi"]) if c["res_en"] else (c["lo"], c["hi"]))
                    counts["lo_hits"] += int(v == lo)
                    counts["hi_hits"] += int(v == hi)

        src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng,
                           gap_prob=rng.choice([0.0, 0.3, 0.6]))
        snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, rng,
                         stall_prob=rng.choice([0.0, 0.3, 0.7]))
        tasks = [cocotb.start_soon(src.send(beats))]
        if c["res_en"] and mode != "RAW":
            rsrc = StreamSource(dut.clk, dut.r__valid, dut.r__ready, dut.r__payload, rng,
                                gap_prob=rng.choice([0.0, 0.3, 0.6]))
            tasks.append(cocotb.start_soon(rsrc.send(resid)))
        got = await snk.receive(len(expected), timeout_cycles=500)
        for t in tasks:
            await t
        for n, (e, word) in enumerate(zip(expected, got)):
            g = unpack(ol, word)
            for k in range(N):
                if e["data"][k] is not None and g["data"][k] != e["data"][k]:
                    where = "pooled" if mode == "POOL" else f"pixel {e['pixel']}"
                    raise AssertionError(
                        f"config {idx} ({mode}, res_en={c['res_en']}, C_out={c_out}, pixels={npix}): "
                        f"{where} channel {e['chan'] + k}: expected {e['data'][k]}, got {g['data'][k]}"
                    )
            for f in ("chan", "mask", "last"):
                if g[f] != e[f]:
                    raise AssertionError(
                        f"config {idx} ({mode}): word {n} (pixel {e['pixel']}, channel {e['chan']}): "
                        f"field {f} expected {e[f]}, got {g[f]}"
                    )
        await _wait_idle(dut)
    await snk.expect_idle(20)
    dut._log.info(f"{n_cfg} configurations checked: {counts}")
    assert counts["lo_hits"] and counts["hi_hits"], f"clamp ends not exercised: {counts}"


@cocotb.test()
async def output_stage_throughput(dut):
    """With an always-ready sink and no gaps, one beat is accepted every cycle."""
    stage_args = json.loads(os.environ["TB_STAGE"])
    from hw.output_stage import ConfigLayout, Mode, OutputStage
    ref = OutputStage(**stage_args)
    start_clock(dut.clk)
    dut.cfg.value = pack(ConfigLayout, {"mode": Mode.QUANT.value, "lo": -128, "hi": 127})
    await reset(dut.clk, dut.rst)
    n = 200
    beats = [pack(ref.input_layout, {"acc": [i] * ref.lanes, "chan": 0, "mask": 1}) for i in range(n)]
    src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, random.Random(0))
    snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, random.Random(0))
    cocotb.start_soon(snk.receive(n))
    start = cocotb.utils.get_sim_time("ns")
    await src.send(beats)
    cycles = round((cocotb.utils.get_sim_time("ns") - start) / 10)
    dut._log.info(f"{n} beats accepted in {cycles} cycles")
    assert cycles <= n + 1, f"{n} beats took {cycles} cycles"
