"""The run-through datapath: QKV projection feeding attention on one shared PE array.

::

    tokens -> LinearEngine (delta QKV projection) --qkv beats--> AttentionEngine -> o
                     \\                                            /
                      `-------- PEArbiter -- one PEArray ---------'

The projection's output goes straight into the attention engine's QKV buffers (no host round
trip). Both engines issue accumulations to the one array through :class:`hw.pe_arbiter.PEArbiter`,
which switches between them at accumulation boundaries, round robin. The attention engine has
two sequence slots, so the projection of sequence ``s + 1`` runs while attention works on
sequence ``s``: when tokens are few the projection dominates and attention fills its gaps, when
they are many attention dominates and the projection fills the gaps (the softmax tails, the
wait for a sequence's last token), and the array stays busy either way.

No deadlock: the projection's results always drain, because a token of sequence ``s`` is let
into the projection only once sequence ``s - 2`` has released its slot (:attr:`released`), so
the slot its results go to is free; the attention engine only opens an accumulation whose
results it can take.

Registers: addresses ``0 .. 15`` are the linear engine's (:class:`hw.linear_engine.Reg`),
``16 .. 31`` the attention engine's (:class:`hw.attention_engine.Reg`). Program the linear
engine with ``D_OUT = 3 x heads x head_dim`` and ``TOKENS = SEQUENCES x N``.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from hw.attention_engine import AttentionEngine, attention_mask_layout, attention_output_layout
from hw.delta_encoder import token_layout
from hw.linear_engine import LinearEngine, channel_load_layout, weight_load_layout
from hw.pe_arbiter import PEArbiter
from hw.pe_array import PEArray
from hw.registers import register_port

__all__ = ["ATTENTION_BASE", "RunThrough"]

#: Register address of the attention engine's register 0.
ATTENTION_BASE = 16


class RunThrough(wiring.Component):
    """Linear projection and sparse attention back to back on one PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.delta_encoder.token_layout` beats (the QKV layer's input).
    w_load, c_load : the linear engine's parameter loading streams.
    masks : ``In(stream)`` of :func:`hw.attention_engine.attention_mask_layout` beats.
    o : ``Out(stream)`` of :func:`hw.attention_engine.attention_output_layout` beats.
    csr_addr, csr_w_en, csr_w_data, csr_r_data : register port (see the module docstring).
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(token_layout(config))),
            "w_load": In(stream.Signature(weight_load_layout(config))),
            "c_load": In(stream.Signature(channel_load_layout(config))),
            "masks": In(stream.Signature(attention_mask_layout(config))),
            "o": Out(stream.Signature(attention_output_layout(config))),
            **register_port(5),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.linear = lin = LinearEngine(cfg, external_pe=True)
        m.submodules.attention = att = AttentionEngine(cfg, external_pe=True)
        m.submodules.arbiter = arb = PEArbiter(cfg, ports=2)
        m.submodules.pe = pe = PEArray(cfg)
        connect(m, lin.pe_i, arb.i0)
        connect(m, arb.o0, lin.pe_o)
        connect(m, att.pe_i, arb.i1)
        connect(m, arb.o1, att.pe_o)
        connect(m, arb.pe_i, pe.i)
        connect(m, pe.o, arb.pe_o)
        connect(m, wiring.flipped(self.w_load), lin.w_load)
        connect(m, wiring.flipped(self.c_load), lin.c_load)
        connect(m, wiring.flipped(self.masks), att.masks)
        connect(m, att.o, wiring.flipped(self.o))
        connect(m, lin.o, att.qkv)

        # Tokens of sequence s enter once sequence s - 2 has left its QKV slot.
        tok_in = Signal(range(cfg.max_tokens + 1))
        seq_in = Signal(16)
        allow = Signal()
        m.d.comb += allow.eq((seq_in - att.released)[:16] < 2)
        m.d.comb += [lin.i.valid.eq(self.i.valid & allow), lin.i.payload.eq(self.i.payload),
                     self.i.ready.eq(lin.i.ready & allow)]
        with m.If(self.i.valid & self.i.ready & self.i.payload.last):
            with m.If(tok_in == att.n_tokens - 1):
                m.d.sync += [tok_in.eq(0), seq_in.eq(seq_in + 1)]
            with m.Else():
                m.d.sync += tok_in.eq(tok_in + 1)
        # A start of the attention engine restarts the sequence count.
        with m.If(self.csr_w_en & (self.csr_addr == ATTENTION_BASE) & self.csr_w_data[0]):
            m.d.sync += [tok_in.eq(0), seq_in.eq(0)]

        sel_att = self.csr_addr[4]
        sel_d = Signal()
        m.d.sync += sel_d.eq(sel_att)
        for eng, mine in ((lin, ~sel_att), (att, sel_att)):
            m.d.comb += [eng.csr_addr.eq(self.csr_addr[:4]), eng.csr_w_data.eq(self.csr_w_data),
                         eng.csr_w_en.eq(self.csr_w_en & mine)]
        m.d.comb += self.csr_r_data.eq(Mux(sel_d, att.csr_r_data, lin.csr_r_data))
        return m
