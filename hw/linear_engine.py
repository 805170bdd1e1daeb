"""Linear mode of the run-through datapath: delta projection ``y = y_ref + W delta`` on the PE array.

Data flow (one token-wise linear layer, ``d_in`` inputs, ``d_out`` outputs)::

    tokens (int8, e per beat) -> DeltaEncoder -> Δ bitmap + packed values (through a register
      slice) -> BitmapDecoder -> register slice -> pair buffer (one token, double buffered;
      the token's position and mode from the encoder through a FIFO of TOKENS_IN_FLIGHT)
      -> feeder: for each output chunk, for each
         (index i, value Δ_i): PE beat  y[chunk] += Δ_i * W[chunk, i]   (weight column fetch)
      -> PE array (raw accumulators, ``bypass``) -> output stage: y = y_ref (or bias) + acc,
         y_ref <- y, per-channel requantisation -> output rows (``lanes`` values per beat)

The engine is a sequencer and operand feeder around the one :class:`hw.pe_array.PEArray`
(the attention engine uses the same array). An output chunk is ``rows * lanes`` channels: row
``r`` of chunk ``c`` computes channels ``(c * rows + r) * lanes ...``; the rows of a partial last
chunk are masked off and their results dropped.

Parameters arrive through two load streams while the engine is idle: ``w_load`` (weight words,
see :func:`weight_words`) and ``c_load`` (per ``lanes`` channels: bias, requantisation
multiplier and shift, see :func:`channel_words`). The buffers hold ``max_layers`` layers (one
per transformer block); the ``layer`` setting selects the one a run uses and the loads write.
The shape, threshold and control bits are registers of :class:`hw.linear_engine.LinearEngine`
(see :data:`REGISTERS`).
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from golden import contract
from hw import arith
from hw.arith import bits_for, log2_exact
from hw.bitmap_decoder import BitmapDecoder
from hw.delta_encoder import DeltaEncoder, token_info_layout, token_layout
from hw.engine import LAYER, Engine, EngineRegisters, Setting, layer_part
from hw.memories import absent_ports
from hw.packing import pack_layout
from hw.pe_array import PEClientSignature, Route
from hw.register_slice import RegisterSlice

#: Token infos (position, dense) the encoder may hold ahead of the pair buffer's writer: a
#: token of one word takes a cycle at the encoder and about eight to reach the pair buffer
#: (packer, value slice, decoder, pair slice), so that many short tokens can be on the way.
TOKENS_IN_FLIGHT = 8

__all__ = ["REGISTERS", "LinearEngine", "weight_words", "channel_words", "engine_limits",
           "activation_layout", "linear_output_layout", "logit_layout", "weight_load_layout",
           "channel_load_layout"]


#: The linear engine's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "linear",
    settings=[
        Setting("d_in", doc="input width d_in (multiple of bitmap_word)"),
        Setting("d_out", doc="output width d_out (multiple of lanes)"),
        Setting("tokens", doc="tokens in the run (the run is done when all have left)"),
        Setting("tau", 8, doc="delta threshold (int8 units)"),
        Setting("mode", data.StructLayout({"delta_enable": 1, "wide": 1}),
                init={"delta_enable": 1},
                doc="delta_enable (0: dense baseline), wide (int16 outputs)"),
        LAYER,
    ],
    errors=(("load", "a START before the weights and channel constants of the programmed "
                     "shape were loaded into the layer (the run does not start; config is set "
                     "too)"),
            ("token", "a token's length disagreed with d_in (delta encoder)"),
            ("stream", "bitmap and value counts disagreed (bitmap decoder)"),
            ("overflow", "an accumulator or y = y_ref + acc left its format")),
    counters=(("busy", "cycles the PE array accepted an operand beat"),
              ("mac_lanes", "lane-cycles doing a multiply-accumulate (active rows x lanes)"),
              ("tokens_out", "tokens emitted"),
              ("pairs", "(index, value) pairs the PE array processed (per chunk)")),
    pulses=(("clear_refs", "forget every delta reference (each position's next token is dense)"),
            ("reset_load", "restart the layer's weight and channel-constant load addresses")))


def engine_limits(config, max_in=None, max_out=None):
    """Largest shapes an engine accepts: ``(max d_in, max d_out, weight words per row of one
    layer)``; ``max_in`` and ``max_out`` default to ``max_reduction``. The weight words are
    what the widest shape needs (``ceil(max_out / (rows lanes)) x max_in``, see
    :func:`weight_words`), at most ``weight_depth / rows``."""
    max_in = config.max_reduction if max_in is None else max_in
    max_out = config.max_reduction if max_out is None else max_out
    chunks = -(-max_out // (config.rows * config.lanes))
    return max_in, max_out, min(config.weight_depth // config.rows, chunks * max_in)


def weight_words(config, weight):
    """The ``w_load`` beats of a weight matrix ``weight[d_out][d_in]`` (nested lists of int8):
    word ``n`` is row ``n % rows`` at address ``n // rows``, address ``c * d_in + i`` holding
    ``W[(c*rows + r)*lanes : +lanes, i]`` (zeros past ``d_out``)."""
    R, V = config.rows, config.lanes
    d_out, d_in = len(weight), len(weight[0])
    chunks = -(-d_out // (R * V))
    words = []
    for c in range(chunks):
        for i in range(d_in):
            for r in range(R):
                base = (c * R + r) * V
                words.append({"data": [weight[base + l][i] if base + l < d_out else 0
                                       for l in range(V)]})
    return words


def channel_words(config, bias, mult, shift):
    """The ``c_load`` beats of per-channel constants (``lanes`` channels per beat)."""
    V = config.lanes
    if len(bias) % V:
        raise ValueError("d_out ({!r}) must be a multiple of lanes ({!r})".format(len(bias), V))
    return [{"bias": list(bias[s:s + V]), "mult": list(mult[s:s + V]),
             "shift": list(shift[s:s + V])} for s in range(0, len(bias), V)]


def weight_load_layout(config):
    """One ``w_load`` beat: ``lanes`` weights of one row (see :func:`weight_words`)."""
    return data.StructLayout({"data": data.ArrayLayout(arith.shape_of(contract.WEIGHT),
                                                       config.lanes)})


def channel_load_layout(config):
    """One ``c_load`` beat: bias and requantisation constants of ``lanes`` channels."""
    V = config.lanes
    return data.StructLayout({
        "bias": data.ArrayLayout(arith.shape_of(config.acc_format), V),
        "mult": data.ArrayLayout(arith.shape_of(contract.REQ_MULT), V),
        "shift": data.ArrayLayout(arith.shape_of(contract.REQ_SHIFT), V)})


def activation_layout(config):
    """One activation beat between stages: ``lanes`` consecutive channels of a token (int8
    values, or int16 in the linear engine's wide mode), ``last`` on its final beat."""
    return data.StructLayout({"data": data.ArrayLayout(signed(16), config.lanes), "last": 1})


def logit_layout(config):
    """One output beat of a linear engine built with ``logits=True`` (the classifier): the
    accumulators ``W x + b`` of ``lanes`` channels, unrequantised (the integer model's logits),
    sign-extended to 32 bits; ``last`` on a token's final beat."""
    if config.acc_format.bits > 32:
        raise ValueError("Accumulators of {} bits do not fit 32-bit logits"
                         .format(config.acc_format.bits))
    return data.StructLayout({"data": data.ArrayLayout(signed(32), config.lanes), "last": 1})


def linear_output_layout(config, logits=False):
    """The linear engine's output beats: activation beats, or logits (:func:`logit_layout`)."""
    return logit_layout(config) if logits else activation_layout(config)


def _feed_layout(config, chunk_shape):
    """One beat in the feeder's pair-read (S1) and weight-read (S2) stages."""
    return data.StructLayout({
        "valid": 1,
        "first": 1,                             # opens the chunk's accumulation
        "last": 1,                              # closes it
        "null": 1,                              # a token with no pairs (closes each chunk)
        "chunk": chunk_shape,
        "pos": unsigned(config.position_bits),  # spatial position (delta reference)
        "dense": 1,                             # the token is dense (no reference)
        "bank": unsigned(bits_for(config.decode_width)),   # S1: pair bank to read
        "value": arith.shape_of(config.operand_format),    # S2: the pair's value
    })


def _tag_layout(config, chunk_shape):
    """What travels with an accumulation through the PE array (the engine's tag FIFO)."""
    return data.StructLayout({"pos": unsigned(config.position_bits), "dense": 1,
                              "tok_last": 1, "chunk": chunk_shape})


class LinearEngine(Engine):
    """Sparse (delta) linear projection, a client of the shared PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``rows`` and ``decode_width`` must be powers of two (chunk and bank arithmetic are
        shifts).
    logits : bool
        The classifier: ``o`` carries the accumulators ``y`` themselves
        (:func:`logit_layout`; the channel constants' ``mult`` and ``shift`` are unused).
    max_out : int or None
        The widest output this engine runs (a multiple of ``lanes``, at most
        ``max_reduction``; default ``max_reduction``): it sizes the delta references ``y_ref``
        (``max_positions x max_out / lanes`` accumulators), the channel constants and, with
        ``max_in``, the weights. The whole model's projections pass their layer widths: at
        ``vidt`` the default, sized by attention's 512 tokens, asked for 950 kbit of ``y_ref``
        per engine.
    max_in : int or None
        The widest input (a multiple of ``bitmap_word``, at most ``max_reduction``, the
        default): it sizes the delta encoder's references (``max_positions x max_in`` int8)
        and the weights (:func:`engine_limits`).
    delta : bool
        False for an engine that only runs dense (the embedding, the classifier): no ``y_ref``
        memory; a START with ``delta_enable`` set is a ``config`` error.

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.delta_encoder.token_layout` beats: int8 tokens,
        ``bitmap_word`` elements per beat, with their spatial position.
    o : ``Out(stream)`` of :func:`activation_layout` beats: ``d_out / lanes`` beats per token
        in channel order, ``last`` on a token's final beat; values are saturated to int8, or
        int16 in wide mode.
    w_load, c_load : ``In(stream)``
        Weight and channel-constant loading while idle (see :func:`weight_words`,
        :func:`channel_words`).
    pe : ``Out(PEClientSignature)``
        Its port of the PE array.
    csr : ``In(RegisterSignature)``
        Registers :data:`REGISTERS`.

    Errors: ``config`` (a START with a shape out of range, or, with ``load`` too, before the
    weights and channel constants of the shape were loaded since the last ``reset_load``: the
    run does not start and no token is taken), ``token`` (a token's beats disagree with
    ``d_in``: it is cut or padded, the run goes on), ``stream`` (decoder counts disagree), ``overflow`` (``y`` left the accumulator
    format; the value wraps).

    Throughput: one (index, value) pair per cycle per output chunk of ``rows x lanes``
    channels (a token with no sent pair still costs one beat per chunk).
    """

    registers = REGISTERS

    def __init__(self, config, *, logits=False, max_out=None, max_in=None, delta=True):
        for what, n in (("rows", config.rows), ("decode_width", config.decode_width)):
            if n & (n - 1):
                raise ValueError("LinearEngine needs a power-of-two {}, not {!r}".format(what, n))
        widest = config.max_reduction
        sizes = {}
        for what, n, unit in (("max_out", max_out, config.lanes),
                              ("max_in", max_in, config.bitmap_word)):
            if n is None:           # max_reduction, whatever it is a multiple of
                sizes[what] = widest
                continue
            if (not isinstance(n, int) or isinstance(n, bool) or n < unit or n > widest
                    or n % unit):
                self._MustUse__silence = True
                raise ValueError("{} must be a multiple of {} in {} .. {}, not {!r}"
                                 .format(what, unit, unit, widest, n))
            sizes[what] = n
        self._max_out, self._max_in = sizes["max_out"], sizes["max_in"]
        self._delta = bool(delta)
        self._logits = bool(logits)
        super().__init__(config, {
            "i": In(stream.Signature(token_layout(config))),
            "o": Out(stream.Signature(linear_output_layout(config, self._logits))),
            "w_load": In(stream.Signature(weight_load_layout(config))),
            "c_load": In(stream.Signature(channel_load_layout(config))),
            "pe": Out(PEClientSignature(config)),
        })

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        m.submodules.encoder = enc = DeltaEncoder(self._config, max_in=self._max_in,
                                                  refs=self._delta)
        m.submodules.decoder = dec = BitmapDecoder(self._config)
        ns = self._shape(m, ctl)
        ns.enc, ns.dec = enc, dec
        m.d.comb += [enc.words.eq(ns.words), enc.tau.eq(ctl.settings.tau),
                     enc.delta_enable.eq(ctl.settings.mode.delta_enable),
                     enc.clear_refs.eq(ctl.pulse.clear_refs),
                     enc.clear_error.eq(ctl.pulse.clear_error),
                     ctl.raise_error.token.eq(enc.error),
                     ctl.raise_error.stream.eq(dec.error),
                     ctl.finished.eq(ctl.counters.tokens_out == ctl.settings.tokens)]
        m.d.comb += [enc.i.valid.eq(self.i.valid & ctl.running), enc.i.payload.eq(self.i.payload),
                     self.i.ready.eq(enc.i.ready & ctl.running)]
        connect(m, enc.o_map, dec.i_map)
        # Register slices on the value stream and the decoder's pairs: the encoder's packer,
        # the decoder and the pair buffer's writer were one ready chain (boards.timing: 28 ns
        # estimated on the ULX3S); each now ends at a register. The tokens' infos wait in a
        # FIFO, so that the slices' latency does not hold the encoder to one token ahead of
        # the pair buffer.
        m.submodules.val_slice = vs = RegisterSlice(enc.o_val.payload.shape())
        connect(m, enc.o_val, vs.i)
        connect(m, vs.o, dec.i_val)
        m.submodules.pair_slice = ps = RegisterSlice(dec.o.payload.shape())
        connect(m, dec.o, ps.i)
        m.submodules.tok_fifo = tf = fifo.SyncFIFOBuffered(
            width=len(enc.o_tok.payload.as_value()), depth=TOKENS_IN_FLIGHT)
        m.d.comb += [tf.w_data.eq(enc.o_tok.payload), tf.w_en.eq(enc.o_tok.valid),
                     enc.o_tok.ready.eq(tf.w_rdy)]
        ns.pairs, ns.tok = ps.o, tf
        self._loading(m, ns)
        self._pair_buffer(m, ns)
        self._feeder(m, ns)
        self._output_stage(m, ns)
        return m

    def _shape(self, m, ctl):
        """The shape settings, their derived sizes and the configuration check."""
        cfg = self._config
        R, V, E = cfg.rows, cfg.lanes, cfg.bitmap_word
        max_d, max_out, w_depth = engine_limits(cfg, self._max_in, self._max_out)
        max_slices = max_out // V
        st = ctl.settings
        ns = SimpleNamespace(ctl=ctl, max_d=max_d, max_slices=max_slices, w_depth=w_depth)
        # Settings are kept whole so that a too-large value is refused, not truncated.
        ns.d_in = Signal(range(max_d + 1))
        ns.d_out = Signal(range(max_out + 1))
        ns.words = Signal(range(max_d // E + 2))
        ns.slices = Signal(range(max_slices + 2))
        ns.chunks = Signal(range(max_slices + 2))
        m.d.comb += [ns.d_in.eq(st.d_in), ns.d_out.eq(st.d_out),
                     ns.words.eq(ns.d_in >> log2_exact(E)), ns.slices.eq(ns.d_out >> log2_exact(V)),
                     ns.chunks.eq((ns.slices + R - 1) >> log2_exact(R))]
        ns.shape_ok = Signal()
        ns.loaded = Signal()          # driven by _loading
        ns.w_base, layer_ok = layer_part(m, ctl, cfg, w_depth)
        ns.c_base, _ = layer_part(m, ctl, cfg, max_slices)
        ns.layer_ok = Signal()
        m.d.comb += ns.layer_ok.eq(layer_ok)
        m.d.comb += ns.shape_ok.eq(
            (st.d_in != 0) & (st.d_in[:log2_exact(E)] == 0) & (st.d_in <= max_d)
            & (st.d_out != 0) & (st.d_out[:log2_exact(V)] == 0) & (st.d_out <= max_out)
            & (ns.chunks * ns.d_in <= w_depth) & ns.layer_ok
            & (self._delta | ~st.mode.delta_enable))
        m.d.comb += [ctl.config_ok.eq(ns.shape_ok & ns.loaded),
                     ctl.raise_error.load.eq(ctl.pulse.start & ns.shape_ok & ~ns.loaded)]
        return ns

    def _loading(self, m, ns):
        """Weight and channel-constant buffers of ``max_layers`` parts, written from ``w_load``
        and ``c_load`` while idle into the ``layer`` setting's part (``reset_load`` restarts
        its addresses). Each part keeps its own fill level, so that a START checks that the
        run's own layer was loaded."""
        cfg = self._config
        R, V, L = cfg.rows, cfg.lanes, cfg.max_layers
        running, reset_load = ns.ctl.running, ns.ctl.pulse.reset_load
        layer = ns.ctl.settings.layer[:arith.bits_for(L)]
        ns.w_mems = []
        for r in range(R):
            mem = Memory(shape=data.ArrayLayout(arith.shape_of(contract.WEIGHT), V),
                         depth=L * ns.w_depth, init=[])
            m.submodules[f"weights_{r}"] = mem
            ns.w_mems.append(mem)
        w_row = Signal(range(R))
        w_fill = Array(Signal(range(ns.w_depth + 1), name=f"w_fill_{n}") for n in range(L))
        c_fill = Array(Signal(range(ns.max_slices + 1), name=f"c_fill_{n}") for n in range(L))
        w_addr, c_addr = w_fill[layer], c_fill[layer]
        w_take = self.w_load.valid & self.w_load.ready & ns.layer_ok
        m.d.comb += self.w_load.ready.eq(~running)
        for r, mem in enumerate(ns.w_mems):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(ns.w_base + w_addr), wp.data.eq(self.w_load.payload.data),
                         wp.en.eq(w_take & (w_row == r) & (w_addr < ns.w_depth))]
        with m.If(reset_load):
            m.d.sync += [w_row.eq(0), w_addr.eq(0)]
        with m.Elif(w_take):
            m.d.sync += w_row.eq(Mux(w_row == R - 1, 0, w_row + 1))
            with m.If((w_row == R - 1) & (w_addr < ns.w_depth)):     # saturates: no wrap
                m.d.sync += w_addr.eq(w_addr + 1)

        ns.c_mem = c_mem = Memory(shape=self.c_load.payload.shape(), depth=L * ns.max_slices,
                                  init=[])
        m.submodules.channels = c_mem
        c_wp = c_mem.write_port()
        c_take = self.c_load.valid & self.c_load.ready & ns.layer_ok
        m.d.comb += [self.c_load.ready.eq(~running), c_wp.addr.eq(ns.c_base + c_addr),
                     c_wp.data.eq(self.c_load.payload),
                     c_wp.en.eq(c_take & (c_addr < ns.max_slices))]
        with m.If(reset_load):
            m.d.sync += c_addr.eq(0)
        with m.Elif(c_take & (c_addr < ns.max_slices)):
            m.d.sync += c_addr.eq(c_addr + 1)
        # The layer is loaded since its last reset_load: every weight row of the shape's
        # chunks and the constants of every output slice.
        m.d.comb += ns.loaded.eq((w_addr >= ns.chunks * ns.d_in) & (c_addr >= ns.slices))

    def _pair_buffer(self, m, ns):
        """Decoded (index, value) pairs of a token into ``decode_width`` interleaved banks, two
        token slots (the writer fills one while the feeder reads the other)."""
        cfg = self._config
        K = cfg.decode_width
        kb = log2_exact(K)
        slot_pairs = ns.max_d               # a token sends at most d_in pairs
        ns.pair_layout = data.StructLayout({"index": unsigned(cfg.index_bits),
                                            "value": arith.shape_of(cfg.operand_format)})
        ns.bank_depth = -(-slot_pairs // K)
        ns.banks = []
        for q in range(K):
            mem = Memory(shape=ns.pair_layout, depth=2 * ns.bank_depth, init=[])
            m.submodules[f"pairs_{q}"] = mem
            ns.banks.append(mem)
        slot = data.StructLayout({"n": range(slot_pairs + 1),
                                  "pos": unsigned(cfg.position_bits), "dense": 1})
        ns.slots = [Signal(slot, name=f"slot_{s}") for s in range(2)]
        ns.full = Signal(2)                 # slot holds a complete token
        w_slot = Signal()                   # slot being written
        w_count = Signal(range(slot_pairs + K + 1))
        free = ~ns.full.bit_select(w_slot, 1)
        pairs, tok = ns.pairs, ns.tok
        info = Signal(token_info_layout(cfg))
        m.d.comb += info.eq(tok.r_data)
        take = pairs.valid & free & tok.r_rdy
        m.d.comb += [pairs.ready.eq(free & tok.r_rdy), tok.r_en.eq(take & pairs.payload.last)]
        beat = pairs.payload
        for q in range(K):
            wp = ns.banks[q].write_port()
            # Entry j of the beat is pair w_count + j: bank (w_count + j) % K, address
            # (w_count + j) // K. Bank q takes entry j = (q - w_count) % K.
            j = Signal(range(K), name=f"entry_{q}")
            m.d.comb += j.eq((q - w_count)[:kb] if K > 1 else 0)
            m.d.comb += [wp.addr.eq(w_slot * ns.bank_depth + ((w_count + j) >> kb)),
                         wp.data.index.eq(beat.index[j]), wp.data.value.eq(beat.value[j]),
                         wp.en.eq(take & (j < beat.count))]
        with m.If(take):
            with m.If(beat.last):
                m.d.sync += [w_count.eq(0), w_slot.eq(~w_slot),
                             ns.full.bit_select(w_slot, 1).eq(1)]
                for s in range(2):
                    with m.If(w_slot == s):
                        m.d.sync += [ns.slots[s].n.eq(w_count + beat.count),
                                     ns.slots[s].pos.eq(info.position),
                                     ns.slots[s].dense.eq(info.dense)]
            with m.Else():
                m.d.sync += w_count.eq(w_count + beat.count)

    def _feeder(self, m, ns):
        """S0 sequencer -> S1 pair read -> S2 weight read -> PE beat: for each output chunk of
        the token in the read slot, one beat per pair ``y[chunk] += value * W[chunk, index]``."""
        cfg = self._config
        R, V, K = cfg.rows, cfg.lanes, cfg.decode_width
        kb = log2_exact(K)
        ctl, req = ns.ctl, self.pe.req
        feed = _feed_layout(cfg, ns.chunks.shape())
        ns.tag_layout = _tag_layout(cfg, ns.chunks.shape())
        m.submodules.tags = ns.tags = tags = fifo.SyncFIFO(width=ns.tag_layout.size, depth=4)
        s1, s2 = Signal(feed), Signal(feed)
        r_slot = Signal()
        chunk = Signal.like(ns.chunks)
        p = Signal(range(ns.max_d + 1))
        adv = Signal()
        # S2 moves when empty or when the array takes its beat (req.valid below holds a closing
        # beat until its tag has room).
        m.d.comb += adv.eq(~s2.valid | (req.valid & req.ready))

        cur = Signal.like(ns.slots[0])
        m.d.comb += cur.eq(Mux(r_slot, ns.slots[1], ns.slots[0]))
        steps = Mux(cur.n == 0, 1, cur.n)       # an empty token still closes each chunk
        s0_valid = ns.full.bit_select(r_slot, 1) & ctl.running
        s0_last = p == steps - 1
        pair_rp = [b.read_port(transparent_for=()) for b in ns.banks]
        for rp in pair_rp:
            m.d.comb += [rp.addr.eq(r_slot * ns.bank_depth + (p >> kb)), rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s1.valid.eq(s0_valid), s1.first.eq(p == 0), s1.last.eq(s0_last),
                         s1.null.eq(cur.n == 0), s1.chunk.eq(chunk),
                         s1.bank.eq(p[:kb] if K > 1 else 0), s1.pos.eq(cur.pos),
                         s1.dense.eq(cur.dense)]
            with m.If(s0_valid):
                with m.If(s0_last):
                    m.d.sync += p.eq(0)
                    with m.If(chunk == ns.chunks - 1):
                        m.d.sync += [chunk.eq(0), r_slot.eq(~r_slot),
                                     ns.full.bit_select(r_slot, 1).eq(0)]
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
                with m.Else():
                    m.d.sync += p.eq(p + 1)
        pair = Signal(ns.pair_layout)
        with m.Switch(s1.bank):
            for q in range(K):
                with m.Case(q):
                    m.d.comb += pair.eq(pair_rp[q].data)
        w_rps = [mem.read_port() for mem in ns.w_mems]
        for rp in w_rps:
            m.d.comb += [rp.addr.eq(ns.w_base + s1.chunk * ns.d_in + pair.index),
                         rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s2.eq(s1), s2.value.eq(pair.value)]
        # The slot is freed when S0 leaves it; its tag travels with the beats (the writer
        # may refill the slot while S1/S2 still hold the token's last beats).
        active_rows = Signal(range(R + 1))
        rem = ns.slices - s2.chunk * R
        m.d.comb += active_rows.eq(Mux(rem >= R, R, rem))
        # A closing beat waits for room for its tag: offered without it, the array took the
        # beat while S2 held it, and took it again (a duplicated accumulation once results
        # came back more slowly than four closing beats: the PE array's pipelined output).
        m.d.comb += [req.valid.eq(s2.valid & (~s2.last | ns.tags.w_rdy)),
                     req.payload.eq(pack_layout(
            m, req.payload.shape(),
            {"route": Route.SHARED_SCALAR, "scalar": [s2.value], "clear": s2.first,
             "last": s2.last, "bypass": 1,
             "vector": [[w_rps[r].data[l] for l in range(V)] for r in range(R)],
             "mask": [Mux((r < active_rows) & ~s2.null, (1 << V) - 1, 0) for r in range(R)]}))]
        fire = req.valid & req.ready
        m.d.comb += [ctl.count.busy.eq(fire),
                     ctl.count.mac_lanes.eq(Mux(fire & ~s2.null, active_rows * V, 0)),
                     ctl.count.pairs.eq(fire & ~s2.null)]
        m.d.comb += [tags.w_en.eq(fire & s2.last),
                     tags.w_data.eq(pack_layout(m, ns.tag_layout, {
                         "pos": s2.pos, "dense": s2.dense,
                         "tok_last": s2.chunk == ns.chunks - 1, "chunk": s2.chunk}, name="tag"))]

    def _references(self, m, ns):
        """The delta references' read and write ports; a dense-only engine has none (its
        reads give 0 and its writes go nowhere: every token is dense, y = bias + acc)."""
        cfg = self._config
        layout = data.ArrayLayout(arith.shape_of(cfg.acc_format), cfg.lanes)
        depth = cfg.max_positions * ns.max_slices
        if self._delta:
            m.submodules.y_ref = y_mem = Memory(shape=layout, depth=depth, init=[])
            return y_mem.read_port(transparent_for=()), y_mem.write_port()
        return absent_ports(layout, depth, "y_ref")

    def _output_stage(self, m, ns):
        """O0 accept a result row, read y_ref and the channel constants -> O1 y = y_ref (or
        bias) + acc, write y_ref back -> O1b multiply -> O2 requantise -> ``o``."""
        cfg = self._config
        R, V = cfg.rows, cfg.lanes
        acc_fmt = cfg.acc_format
        acc_shape = arith.shape_of(acc_fmt)
        ctl, res, tags = ns.ctl, self.pe.res, ns.tags
        y_rp, y_wp = self._references(m, ns)
        c_rp = ns.c_mem.read_port()
        tag = data.View(ns.tag_layout, tags.r_data)
        o_adv = ~self.o.valid | self.o.ready
        row = res.payload
        slice_ = Signal(range(ns.max_slices + R + 1))
        m.d.comb += slice_.eq(tag.chunk * R + row.row)
        o0 = res.valid & tags.r_rdy
        m.d.comb += [res.ready.eq(o_adv & tags.r_rdy), tags.r_en.eq(o0 & o_adv & row.last)]
        m.d.comb += [y_rp.addr.eq(tag.pos * ns.max_slices + slice_), y_rp.en.eq(o_adv),
                     c_rp.addr.eq(ns.c_base + slice_), c_rp.en.eq(o_adv)]
        o1 = Signal(data.StructLayout({
            "valid": 1, "keep": 1, "last": 1, "dense": 1, "ovf": 1,
            "raw": data.ArrayLayout(acc_shape, V), "addr": len(y_rp.addr)}))
        with m.If(o_adv):
            m.d.sync += [o1.valid.eq(o0), o1.keep.eq(slice_ < ns.slices),
                         o1.last.eq(tag.tok_last & (slice_ == ns.slices - 1)),
                         o1.dense.eq(tag.dense), o1.raw.eq(row.data), o1.addr.eq(y_rp.addr),
                         o1.ovf.eq(row.overflow)]
        ys = []
        for l in range(V):
            y = Signal(signed(acc_fmt.bits + 1), name=f"y_{l}")
            m.d.comb += y.eq(Mux(o1.dense, c_rp.data.bias[l], y_rp.data[l]) + o1.raw[l])
            ys.append(y)
        y_ovf = Signal()
        m.d.comb += y_ovf.eq(Cat(*[~arith.fits(y, acc_fmt) for y in ys]).any() | o1.ovf)
        m.d.comb += [y_wp.addr.eq(o1.addr), y_wp.en.eq(o_adv & o1.valid & o1.keep)]
        m.d.comb += [y_wp.data[l].eq(ys[l][:acc_fmt.bits].as_signed()) for l in range(V)]
        # O1 -> O1b: y and the channel's constants registered before the multiply. Block RAM
        # output, the add and the multiplier in one cycle were 19.6 ns by boards.timing (the
        # ULX3S run-through's slowest path after the delta encoder and bitmap decoder).
        mult_shape = arith.shape_of(contract.REQ_MULT)
        o1b = Signal(data.StructLayout({
            "valid": 1, "last": 1, "y": data.ArrayLayout(acc_shape, V),
            "mult": data.ArrayLayout(mult_shape, 0 if self._logits else V),
            "shift": data.ArrayLayout(arith.shape_of(contract.REQ_SHIFT),
                                      0 if self._logits else V)}))
        with m.If(o_adv):
            m.d.sync += [o1b.valid.eq(o1.valid & o1.keep), o1b.last.eq(o1.last)]
            for l in range(V):
                m.d.sync += o1b.y[l].eq(ys[l][:acc_fmt.bits].as_signed())
                if not self._logits:
                    m.d.sync += [o1b.mult[l].eq(c_rp.data.mult[l]),
                                 o1b.shift[l].eq(c_rp.data.shift[l])]
        prod_shape = arith.shape_of(contract.product_format(acc_fmt, contract.REQ_MULT))
        o2 = Signal(data.StructLayout({
            "valid": 1, "last": 1, "prod": data.ArrayLayout(prod_shape, V),
            "shift": data.ArrayLayout(arith.shape_of(contract.REQ_SHIFT), V),
            "y": data.ArrayLayout(acc_shape, V if self._logits else 0)}))
        with m.If(o_adv):
            m.d.sync += [o2.valid.eq(o1b.valid), o2.last.eq(o1b.last)]
            for l in range(V):
                if self._logits:
                    m.d.sync += o2.y[l].eq(o1b.y[l])
                else:
                    m.d.sync += [o2.prod[l].eq(o1b.y[l] * o1b.mult[l]),
                                 o2.shift[l].eq(o1b.shift[l])]
        m.d.comb += ctl.raise_error.overflow.eq(o_adv & o1.valid & o1.keep & y_ovf & ctl.running)
        o_fire = self.o.valid & self.o.ready
        m.d.comb += ctl.count.tokens_out.eq(o_fire & self.o.payload.last)
        with m.If(o_fire):
            m.d.sync += self.o.valid.eq(0)
        with m.If(o_adv & o2.valid):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(o2.last)]
            wide = ctl.settings.mode.wide
            for l in range(V):
                if self._logits:
                    m.d.sync += self.o.payload.data[l].eq(o2.y[l])
                    continue
                narrow = arith.requantize_product(o2.prod[l], o2.shift[l], contract.ACT)
                wide_v = arith.requantize_product(o2.prod[l], o2.shift[l], contract.RESID)
                m.d.sync += self.o.payload.data[l].eq(Mux(wide, wide_v, narrow))
