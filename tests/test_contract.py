"""The arithmetic contract and its three implementations (scalar, torch, Amaranth) agree."""

import itertools
import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from golden import contract, qtorch
from hw import arith

SEED = 20261122


def test_formats():
    assert (contract.ACT.min, contract.ACT.max) == (-128, 127)
    assert (contract.WEIGHT.min, contract.WEIGHT.max) == (-127, 127)
    assert (contract.DELTA.min, contract.DELTA.max) == (-256, 255)
    assert contract.DELTA.contains(127 - (-128)) and contract.DELTA.contains(-128 - 127)
    assert (contract.PROB.min, contract.PROB.max) == (0, 255)
    for fmt in (contract.ACT, contract.WEIGHT, contract.DELTA, contract.PROB):
        assert contract.PE_OPERAND.contains(fmt.min) and contract.PE_OPERAND.contains(fmt.max)
    assert contract.IntFormat(4).wrap(8) == -8 and contract.IntFormat(4).wrap(-9) == 7
    assert contract.IntFormat(4, signed=False).wrap(17) == 1


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(bits=0, signed=False), dict(bits=4.0),
                                    dict(bits=8, signed=False, narrow=True)])
def test_invalid_format(kwargs):
    with pytest.raises(ValueError, match="IntFormat"):
        contract.IntFormat(**kwargs)


def test_round_half_up_not_half_even():
    # 2.5 -> 3, -2.5 -> -2, 0.5 -> 1, 1.5 -> 2, -0.5 -> 0: half up, never half to even.
    assert [contract.round_shift(x, 1) for x in (5, -5, 1, 3, -1)] == [3, -2, 1, 2, 0]
    assert contract.round_shift(-6, 2) == -1 and contract.round_shift(-7, 2) == -2
    assert contract.round_shift(12345, 0) == 12345
    with pytest.raises(ValueError):
        contract.round_shift(1, -1)


def test_requantize_saturates_and_checks_constants():
    assert contract.requantize(10**6, 1 << 15, 15) == 127
    assert contract.requantize(-10**6, 1 << 15, 15) == -128
    assert contract.requantize(300, 1 << 14, 15) == 127      # 150 saturates
    assert contract.requantize(201, 1 << 14, 15) == 101      # 100.5 rounds up
    with pytest.raises(ValueError, match="multiplier"):
        contract.requantize(1, 1 << 16, 0)
    with pytest.raises(ValueError, match="shift"):
        contract.requantize(1, 1, 64)


def test_accumulator_format_holds_worst_case():
    op = contract.PE_OPERAND
    for terms in (1, 2, 3, 100, 1537):
        acc = contract.accumulator_format(op, op, terms)
        worst = terms * op.min * op.min
        assert acc.contains(worst) and acc.contains(terms * op.min * op.max)
    assert contract.accumulator_format(op, op, 1).bits == 18
    assert not contract.IntFormat(17).contains(op.min * op.min)


@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 3, 0.001234, 3.7e-9, 123.456, 65535.0])
def test_quantize_multiplier(scale):
    mult, shift = contract.quantize_multiplier(scale)
    assert contract.REQ_MULT.contains(mult) and contract.REQ_SHIFT.contains(shift)
    if shift < contract.REQ_SHIFT.max:
        assert mult >= 1 << 15                             # normalised: full precision
    assert abs(mult / 2**shift - scale) <= 2**-shift / 2 * 1.000001


@pytest.mark.parametrize("scale", [0, -1.0, 70000.0])
def test_quantize_multiplier_rejects(scale):
    with pytest.raises(ValueError):
        contract.quantize_multiplier(scale)


def test_bitmap_pack_roundtrip():
    rng = random.Random(SEED)
    for length in (1, 15, 16, 17, 64, 100):
        bits = [rng.random() < 0.3 for _ in range(length)]
        words = contract.pack_bitmap(bits, 16)
        assert len(words) == contract.bitmap_words(length, 16) == -(-length // 16)
        assert contract.unpack_bitmap(words, length, 16) == bits
    assert contract.pack_bitmap([True] + [False] * 16 + [True], 16) == [1, 2]
    assert contract.pack_values([1, 2, 3], 2) == [[1, 2], [3, 0]]
    assert contract.pack_values([], 2) == []


# --- The three implementations agree. -------------------------------------------------------

SMALL_OUT = contract.IntFormat(4)


def _small_cases():
    return list(itertools.product(range(-64, 64), range(16), range(8)))


def _full_cases(n=3000):
    rng = random.Random(SEED)
    acc = contract.IntFormat(31)
    edges = [acc.min, acc.max, 0, -1, 1]
    cases = [(a, mu, s) for a in edges for mu in (0, 1, contract.REQ_MULT.max) for s in (0, 1, 63)]
    cases += [(rng.randint(acc.min, acc.max), rng.randint(0, contract.REQ_MULT.max),
               rng.randint(0, contract.REQ_SHIFT.max)) for _ in range(n)]
    return cases


@pytest.mark.parametrize("cases,out", [(_small_cases(), SMALL_OUT), (_full_cases(), contract.ACT)],
                         ids=["exhaustive-small", "random-full"])
def test_torch_matches_scalar(cases, out):
    acc, mult, shift = (torch.tensor(c, dtype=torch.int64) for c in zip(*cases))
    got = qtorch.requantize(acc, mult, shift, out).tolist()
    want = [contract.requantize(a, mu, s, out) for a, mu, s in cases]
    assert got == want
    assert qtorch.round_shift(acc, shift).tolist() == [contract.round_shift(a, s)
                                                       for a, _, s in cases]
    assert qtorch.wrap(acc * mult, contract.IntFormat(12)).tolist() == [
        contract.IntFormat(12).wrap(a * mu) for a, mu, _ in cases]


def test_torch_rejects_floats():
    with pytest.raises(TypeError):
        qtorch.requantize(torch.tensor([1.5]), 1, 0)


def _amaranth_requantize(cases, acc_bits, out):
    acc = Signal(signed(acc_bits))
    mult = Signal(unsigned(contract.REQ_MULT.bits))
    shift = Signal(unsigned(contract.REQ_SHIFT.bits))
    y = Signal(arith.shape_of(out))
    m = Module()
    m.d.comb += y.eq(arith.requantize(acc, mult, shift, out))
    got = []

    async def bench(ctx):
        for a, mu, s in cases:
            ctx.set(acc, a)
            ctx.set(mult, mu)
            ctx.set(shift, s)
            got.append(ctx.get(y))
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("cases,acc_bits,out", [(_small_cases(), 7, SMALL_OUT),
                                                (_full_cases(1000), 31, contract.ACT)],
                         ids=["exhaustive-small", "random-full"])
def test_amaranth_matches_scalar(cases, acc_bits, out):
    got = _amaranth_requantize(cases, acc_bits, out)
    want = [contract.requantize(a, mu, s, out) for a, mu, s in cases]
    bad = [(c, g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert not bad, "first mismatches (acc, mult, shift), got, want: {}".format(bad[:5])


@pytest.mark.parametrize("out", [contract.ACT, contract.PROB, SMALL_OUT], ids=str)
def test_round_saturate_tail_exhaustive(out):
    # Every 12-bit head, both modes: the shallow tail against the contract's rule on the
    # scalar side (round half up of head / 2, then saturate), not against the hardware's own.
    head = Signal(signed(12))
    zero = Signal()
    y = Signal(arith.shape_of(out))
    m = Module()
    m.d.comb += y.eq(arith.round_saturate_tail(head, zero, out))
    bad = []

    async def bench(ctx):
        for z in (0, 1):
            ctx.set(zero, z)
            for h in range(-2048, 2048):
                ctx.set(head, h)
                want = out.saturate(h if z else contract.round_shift(h, 1))
                if ctx.get(y) != want:
                    bad.append((h, z, ctx.get(y), want))
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, "first mismatches (head, zero, got, want): {}".format(bad[:5])


# --- Integer nonlinearities: scalar contract vs torch, and against float. -------------------

def test_exp2_table_and_shift():
    assert contract.EXP2_LUT[0] == contract.EXP2_ONE
    assert all(a > b for a, b in zip(contract.EXP2_LUT, contract.EXP2_LUT[1:]))
    assert contract.exp2_neg(64) == contract.EXP2_ONE // 2       # 2**-1
    assert contract.exp2_neg(64 * 16) == 0
    t = torch.arange(0, 64 * 17)
    assert qtorch.exp2_neg(t).tolist() == [contract.exp2_neg(int(v)) for v in t]
    with pytest.raises(ValueError):
        contract.exp2_neg(-1)


def test_div_half_up_and_isqrt():
    assert [contract.div_half_up(n, 4) for n in (1, 2, 3, -2, -3)] == [0, 1, 1, 0, -1]
    rng = random.Random(SEED)
    nums = [rng.randint(-10**9, 10**9) for _ in range(500)]
    dens = [rng.randint(1, 5000) for _ in range(500)]
    assert qtorch.div_half_up(torch.tensor(nums), torch.tensor(dens)).tolist() == [
        contract.div_half_up(n, d) for n, d in zip(nums, dens)]
    import math
    vals = [0, 1, 2, 3, 4, 15, 16, 17, (1 << 52) - 1, (1 << 52), 10**15 + 7] + [
        rng.randint(0, 1 << 50) for _ in range(500)]
    vals += [v * v for v in range(1000, 1100)] + [v * v - 1 for v in range(1000, 1100)]
    assert qtorch.isqrt(torch.tensor(vals)).tolist() == [math.isqrt(v) for v in vals]


def _softmax_case(rng, n):
    scores = [rng.randint(-50000, 50000) for _ in range(n)]
    kept = [rng.random() < 0.7 for _ in range(n)]
    mult, shift = contract.quantize_multiplier(rng.uniform(1e-4, 1e-2) * 1.4427 * 64)
    return scores, kept, mult, shift


def test_softmax_torch_matches_scalar_and_float():
    rng = random.Random(SEED)
    for _ in range(50):
        scores, kept, mult, shift = _softmax_case(rng, rng.randint(1, 70))
        want = contract.softmax_row(scores, kept, mult, shift)
        got = qtorch.softmax(torch.tensor([scores]), torch.tensor([kept]), mult, shift)
        assert got[0].tolist() == want
        assert all(w == 0 for w, k in zip(want, kept) if not k)
        if any(kept):
            # Within a few units of 2**-8 of the float softmax over kept entries.
            real = torch.tensor(scores, dtype=torch.float64) * (mult / 2**shift / 64 / 1.4427)
            real[~torch.tensor(kept)] = float("-inf")
            ref = torch.softmax(real, 0) * 256
            assert (torch.tensor(want) - ref).abs().max() <= 4
    assert contract.softmax_row([5, 6], [False, False], 1, 0) == [0, 0]


def test_layernorm_torch_matches_scalar_and_float():
    rng = random.Random(SEED)
    for d in (1, 4, 64, 192):
        for _ in range(10):
            x = [rng.randint(contract.RESID.min, contract.RESID.max) // rng.choice([1, 64, 4096])
                 for _ in range(d)]
            gamma = [rng.randint(-127, 127) for _ in range(d)]
            beta = [rng.randint(-5000, 5000) for _ in range(d)]
            mult, shift = contract.quantize_multiplier(1 / 64 / 127 * 40)
            want = contract.layernorm_row(x, gamma, beta, mult, shift)
            got = qtorch.layernorm(torch.tensor([x]), torch.tensor(gamma), torch.tensor(beta),
                                   mult, shift)
            assert got[0].tolist() == want
    # Constant input: sigma guarded (no division by zero), output is beta only.
    assert contract.layernorm_row([7] * 8, [100] * 8, [64 * 3] * 8, 1 << 14, 15) == [96] * 8
    # Against float LayerNorm: normalised values within 1 LSB of 2**-LN_FRAC_BITS.
    x = torch.tensor([rng.randint(-3000, 3000) for _ in range(64)])
    n = qtorch.layernorm(x[None], torch.ones(64, dtype=torch.int64), torch.zeros(64, dtype=torch.int64),
                         1, 0, out=contract.IntFormat(32))
    ref = torch.nn.functional.layer_norm(x.double(), (64,)) * 2**contract.LN_FRAC_BITS
    assert (n[0] - ref).abs().max() <= 1.0


def test_gelu_table():
    table = contract.gelu_table(0.05, 0.04)
    assert len(table) == 256 and table[128] == 0
    assert table[255] == contract.ACT.saturate(int(127 * 0.05 / 0.04 + 0.5)) == 127
    assert min(table) < 0                                   # GELU dips below zero
    x = torch.arange(-128, 128)
    assert qtorch.gelu(x, table).tolist() == list(table)
    with pytest.raises(ValueError):
        qtorch.gelu(torch.tensor([128]), table)
