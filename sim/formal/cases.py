"""What ``make formal`` proves: component x property, the method, and a mutant per property.

Each :class:`Check` is one SymbiYosys task on a fresh :class:`sim.formal.harness.Harness`:
``mode="prove"`` is k-induction of ``depth`` (an unbounded proof when it passes), ``"bmc"``
bounded model checking of ``depth`` steps from reset (no counterexample that short). Its
``mutant`` breaks the component so that the same task must fail; ``make formal`` runs both.

Configurations are small (the solver's cost grows with every register bit) but legal
:class:`hw.config.RTSAConfig` values; control properties cut the multipliers (their products
become free values), which is sound for a property that holds whatever the products are.
Bounds come from the components' docstrings (cycles a block occupies a unit) plus the
pipeline's registers, not from a run.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from amaranth.asserts import AnySeq
from amaranth.hdl import Mux

from hw.config import RTSAConfig
from hw.softmax_unit import RECIP_QUOTIENT_BITS
from hw.softmax_unit import occupancy as softmax_occupancy
from sim.formal import mutants as M
from sim.formal import properties as P

__all__ = ["Check", "CASES", "FORMAL_CONFIG"]

#: The control proofs' configuration: 2 x 2 PEs, 2 decode lanes, 4-bit bitmap words, tokens of
#: up to 8 elements, rows of up to 2 tokens.
FORMAL_CONFIG = RTSAConfig(lanes=2, rows=2, requant_lanes=2, decode_width=2, bitmap_word=4,
                           max_d=8, mlp_ratio=1, max_tokens=2, max_heads=1, weight_depth=8,
                           max_positions=2, requant_steps=3, name="formal")


@dataclass
class Check:
    component: str
    prop: str
    build: Callable            # () -> (dut, [prop], pins)
    mode: str
    depth: int
    mutant: Optional[M.Mutant] = None
    cut: bool = True
    quick: bool = False        # in CI's subset
    mutant_depth: int = 24     # the mutant's BMC depth (at least ``depth``)
    note: str = ""
    expect: str = "PASS"


def _softmax():
    from hw.softmax_unit import SoftmaxUnit
    return SoftmaxUnit(FORMAL_CONFIG)


def _pe_array():
    from hw.pe_array import PEArray
    return PEArray(FORMAL_CONFIG)


def _bitmap():
    from hw.bitmap_decoder import BitmapDecoder
    return BitmapDecoder(FORMAL_CONFIG)


def _subvector():
    from hw.subvector_decoder import SubvectorDecoder
    return SubvectorDecoder(FORMAL_CONFIG)


def _delta():
    from hw.delta_encoder import DeltaEncoder
    return DeltaEncoder(FORMAL_CONFIG)


def _arbiter():
    from hw.pe_arbiter import PEArbiter
    return PEArbiter(FORMAL_CONFIG, ports=2, in_flight=2)


def _slice():
    from hw.register_slice import RegisterSlice
    return RegisterSlice(4)


def _case(make, props, pins=None):
    return lambda: (make(), props, dict(pins or {}))


_no_error = P.no_error_yet()


def _checks():
    N, V, R = FORMAL_CONFIG.max_tokens, FORMAL_CONFIG.lanes, FORMAL_CONFIG.rows
    K = RECIP_QUOTIENT_BITS
    out = []
    add = out.append

    # --- Softmax unit. ----------------------------------------------------------------
    # A block of n <= N beats occupies the unit occupancy(n) cycles (module docstring).
    sm_bound = softmax_occupancy(N)
    add(Check("softmax", "stream rules (o)", _case(_softmax, [P.stream_rules("o")]),
              "prove", 4, M.withdraw("o"), quick=True, mutant_depth=40))
    add(Check("softmax", "conservation: beats in = beats out",
              _case(_softmax, [P.conservation(P.fires("i"), P.fires("o"), N, _no_error)]),
              "bmc", 2 * sm_bound, M.duplicate("o"),
              note="while no error (a block of more than max_tokens beats drops its surplus)"))
    add(Check("softmax", "response: a block leaves in <= {} cycles".format(sm_bound),
              _case(_softmax, [P.response(P.fires_last("i"), P.fires_last("o"), sm_bound,
                                          _no_error, ready=["o"])]),
              "bmc", 2 * sm_bound + 2,
              M.stick("div_step", 0, "the divider never finishes (div_step stuck at 0)")))
    add(Check("softmax", "error sticky", _case(_softmax, [P.sticky(lambda h: h.dut.error)]),
              "prove", 2, M.unstick("error", lambda d: ~d.i.valid), quick=True))

    # --- PE array. ----------------------------------------------------------------------
    # An accumulation's rows leave after the three input stages, the bank, the requantiser's
    # steps, the row assembly and output registers: within 3 + 1 + steps + 2 + rows cycles of
    # its closing beat when nothing stalls; a second accumulation waits for the bank.
    pe_bound = 2 * (3 + 1 + FORMAL_CONFIG.requant_steps + 2 + R)
    # Rows inside, the output stalled: an accumulation in each of the operand and product
    # registers and in the bank (a closing beat writes the bank, not the accumulators), and a
    # row in each requantiser step, the row assembly and the output register.
    pe_rows = 3 * R + FORMAL_CONFIG.requant_steps + 2
    closes = lambda h: h.stream["i"].fire & h.stream["i"].port.payload.last
    add(Check("pe_array", "stream rules (o)", _case(_pe_array, [P.stream_rules("o")]),
              "prove", 6, M.withdraw("o"), quick=True))
    add(Check("pe_array", "conservation: rows out = rows x closed accumulations "
              "(<= {} inside)".format(pe_rows),
              _case(_pe_array, [P.conservation(lambda h: Mux(closes(h), R, 0), P.fires("o"),
                                               pe_rows)]),
              "bmc", 24, M.duplicate("o")))
    add(Check("pe_array", "response: an accumulation's rows leave in <= {} cycles"
              .format(pe_bound),
              _case(_pe_array, [P.response(closes, P.fires_last("o"), pe_bound,
                                           ready=["o"])]),
              "bmc", 2 * pe_bound, M.take_always("i")))

    # --- Bitmap decoder. ----------------------------------------------------------------
    add(Check("bitmap_decoder", "stream rules (o)", _case(_bitmap, [P.stream_rules("o")]),
              "prove", 4, M.withdraw("o"), quick=True))
    add(Check("bitmap_decoder", "conservation: tokens in (map last) = tokens out (last)",
              # Tokens inside: the two bitmap words it holds and the output register.
              _case(_bitmap, [P.conservation(P.fires_last("i_map"), P.fires_last("o"), 3,
                                             _no_error)]),
              "bmc", 20, M.duplicate("o"), note="while no error"))
    add(Check("bitmap_decoder", "error sticky",
              _case(_bitmap, [P.sticky(lambda h: h.dut.error)]),
              "prove", 2, M.unstick("error", lambda d: ~d.i_map.valid), quick=True))

    # --- Sub-vector decoder. ------------------------------------------------------------
    add(Check("subvector_decoder", "stream rules (o)",
              _case(_subvector, [P.stream_rules("o")]),
              "prove", 4, M.withdraw("o"), quick=True))
    add(Check("subvector_decoder", "conservation: columns in = columns out (col_last)",
              _case(_subvector, [P.conservation(P.fires("i"), P.fires_last("o", "col_last"),
                                                2, _no_error)]),
              "bmc", 24, M.duplicate("o"), note="while no error (surplus columns dropped)"))
    sv_bound = FORMAL_CONFIG.max_blocks + 3
    add(Check("subvector_decoder", "response: a column leaves in <= {} cycles".format(sv_bound),
              _case(_subvector, [P.response(P.fires("i"), P.fires_last("o", "col_last"),
                                            sv_bound, _no_error, ready=["o"])]),
              "bmc", 24, M.forced("done", 0, "a column is never retired (done stuck at 0)")))
    add(Check("subvector_decoder", "error sticky",
              _case(_subvector, [P.sticky(lambda h: h.dut.error)]),
              "prove", 2, M.unstick("error", lambda d: ~d.i.valid), quick=True))

    # --- Register slice. ----------------------------------------------------------------
    add(Check("register_slice", "stream rules (o)", _case(_slice, [P.stream_rules("o")]),
              "prove", 3, M.withdraw("o"), quick=True))
    add(Check("register_slice", "conservation: beats in = beats out, at most 2 inside",
              _case(_slice, [P.conservation(P.fires("i"), P.fires("o"), 2)]),
              "bmc", 12, M.take_always("i")))
    add(Check("register_slice", "response: a beat leaves in <= 2 cycles",
              _case(_slice, [P.response(P.fires("i"), P.fires("o"), 2, ready=["o"])]),
              "bmc", 12, M.unstick("o.valid")))

    # --- Delta encoder. -----------------------------------------------------------------
    W = -(-FORMAL_CONFIG.max_reduction // FORMAL_CONFIG.bitmap_word)
    de_pins = {"words": "const", "tau": "const", "delta_enable": "const"}
    for path in ("o_map", "o_val", "o_tok"):
        add(Check("delta_encoder", "stream rules ({})".format(path),
                  _case(_delta, [P.stream_rules(path)], de_pins),
                  "prove", 6, M.withdraw(path, comb=path == "o_map"),
                  quick=path == "o_tok"))
    add(Check("delta_encoder", "conservation: tokens in = tokens out (o_map last)",
              # Tokens inside: one in stage 1, two in each of the register slices of stages
              # 1b and 1c, and up to W + 1 one-word tokens in the map FIFO.
              _case(_delta, [P.conservation(P.fires_last("i"), P.fires_last("o_map"), W + 6,
                                            _no_error)], de_pins),
              "bmc", 12, M.take_always("i"), note="while no error"))
    add(Check("delta_encoder", "error sticky until clear_error",
              _case(_delta, [P.sticky(lambda h: h.dut.error, lambda h: h.dut.clear_error)],
                    de_pins),
              "prove", 2, M.unstick("error", lambda d: ~d.i.valid), quick=True))

    # --- Arbiter. -----------------------------------------------------------------------
    for n in range(2):
        add(Check("pe_arbiter", "stream rules (clients[{}].res)".format(n),
                  _case(_arbiter, [P.stream_rules("clients[{}].res".format(n))]),
                  "bmc", 20, M.withdraw("clients[{}].res".format(n), comb=True)))
    add(Check("pe_arbiter", "conservation: client beats = array beats",
              _case(_arbiter, [P.conservation(
                  lambda h: h.stream["clients[0].req"].fire + h.stream["clients[1].req"].fire,
                  P.fires("array.req"), 0)]),
              "prove", 2, M.take_always("clients[1].req"), quick=True))
    add(Check("pe_arbiter", "results routed: client 0's closed accumulations = its results",
              _case(_arbiter, [P.conservation(P.fires_last("clients[0].req"),
                                              P.fires_last("clients[0].res"), 2)]),
              "bmc", 12, M.forced("w_data", 1, "every closed accumulation recorded as "
                                  "client 1's (ownership FIFO input stuck at 1)"),
              mutant_depth=12))
    add(Check("pe_arbiter", "stream rules (array.req) inside an accumulation",
              _case(_arbiter, [P.stream_rules_inside("array.req")]),
              "bmc", 20, M.withdraw("array.req", comb=True),
              note="between accumulations the grant moves while the array stalls "
                   "(documented deviation)"))
    add(Check("pe_arbiter", "stream rules (array.req) between accumulations",
              _case(_arbiter, [P.stream_rules("array.req")]),
              "bmc", 4, None, expect="FAIL",
              note="documented deviation: the counterexample is the known one"))
    out += _stage_checks()
    return out


#: Pipeline stages with a register file, by module and class: their every output stream is
#: checked against the stream rules, with free register writes (START at any time included).
#: ``(module, class, mode, depth, mutant depth)``: k-induction where it closes; the mutant
#: needs the depth of the stage's first output (LayerNorm: d + its statistics + 8 cycles).
STAGES = [("gelu", "GELU", "prove", 4, 24), ("residual", "ResidualAdd", "prove", 4, 24),
          ("pos_add", "PosAdd", "prove", 4, 24), ("mean_pool", "MeanPool", "bmc", 16, 24),
          ("layernorm", "LayerNorm", "bmc", 16, 80), ("transpose", "Transpose", "bmc", 16, 24),
          ("token_buffer", "TokenBuffer", "bmc", 16, 40),
          ("keep_select", "KeepSelect", "prove", 4, 24), ("to_tokens", "ToTokens", "prove", 4, 24),
          ("route", "Select", "bmc", 16, 24), ("route", "Route", "bmc", 16, 24),
          ("sta_report", "KeyReport", "bmc", 16, 24), ("sta_report", "ActReport", "bmc", 16, 24)]


#: Stages whose outputs are driven in a submodule (a datapath under its START reset).
DATAPATH = {"Transpose": "datapath"}


def _stage(module, cls):
    def make():
        import importlib
        return getattr(importlib.import_module("hw." + module), cls)(FORMAL_CONFIG)
    return make


def _lawful_host(h, m):
    """The register port's write enable: free, except in a cycle where an output stream is
    not ready, so that no write (a setting, STOP, START) lands while a beat waits. (Writes
    that do withdraw or change a waiting beat: the deviation check below.)"""
    ready = [s.port.ready for s in h.streams if not s.taken]
    w_en = AnySeq(1)
    for r in ready:
        w_en = w_en & r
    return w_en


HOST_PINS = {"csr.w_en": _lawful_host}


def _stage_checks():
    from sim.formal.harness import streams_of
    out = []
    for module, cls, mode, depth, mutant_depth in STAGES:
        make = _stage(module, cls)
        dut = make()
        dut._MustUse__silence = True        # only its signature is read here
        outputs = [s.path for s in streams_of(dut) if not s.taken]
        pins = HOST_PINS if "csr" in dut.signature.members else {}
        out.append(Check(module, "stream rules ({})".format(", ".join(outputs)),
                         _case(make, [P.stream_rules(p) for p in outputs], pins),
                         mode, depth, M.withdraw(outputs[0], module=DATAPATH.get(cls)),
                         mutant_depth=mutant_depth,
                         note=cls + (", lawful host" if pins else "")))
    out.append(Check("route", "stream rules (o) under any register writes",
                     _case(_stage("route", "Select"), [P.stream_rules("o")]), "bmc", 8,
                     expect="FAIL", note="Select; a setting written or a STOP while a beat "
                                         "waits changes or withdraws it (documented deviation)"))
    return out


CASES = _checks()
