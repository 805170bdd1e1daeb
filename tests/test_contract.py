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
