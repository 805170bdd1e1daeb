"""Linear mode of the run-through datapath: delta projection ``y = y_ref + W delta`` on the PE array.

Data flow (one token-wise linear layer, ``d_in`` inputs, ``d_out`` outputs)::

    tokens (int8, e per beat) -> DeltaEncoder -> Δ bitmap + packed values -> BitmapDecoder
      -> pair buffer (one token, double buffered) -> feeder: for each output chunk, for each
         (index i, value Δ_i): PE beat  y[chunk] += Δ_i * W[chunk, i]   (weight column fetch)
      -> PE array (raw accumulators, ``bypass``) -> output stage: y = y_ref (or bias) + acc,
         y_ref <- y, per-channel requantisation -> output rows (``lanes`` values per beat)

The engine is a sequencer and operand feeder around the one :class:`hw.pe_array.PEArray`
(the attention engine uses the same array). An output chunk is ``rows * lanes`` channels: row
``r`` of chunk ``c`` computes channels ``(c * rows + r) * lanes ...``; the rows of a partial last
chunk are masked off and their results dropped.

Parameters arrive through two load streams while the engine is idle: ``w_load`` (weight words,
see :func:`weight_words`) and ``c_load`` (per ``lanes`` channels: bias, requantisation
multiplier and shift, see :func:`channel_words`). The shape, threshold and control bits are
registers of :class:`hw.linear_engine.LinearEngine` (see :data:`REGISTERS`).
"""

import enum as py_enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from golden import contract
from hw import arith
from hw.bitmap_decoder import BitmapDecoder
from hw.delta_encoder import DeltaEncoder, token_layout
from hw.packing import pack_layout
from hw.pe_array import Route, pe_ports, use_pe
from hw.registers import register_port, register_reads

__all__ = ["Reg", "REGISTERS", "Ctrl", "Status", "LinearEngine", "weight_words",
           "channel_words", "engine_limits", "linear_output_layout", "weight_load_layout",
           "channel_load_layout"]


class Reg(py_enum.IntEnum):
    """Register addresses (32-bit registers)."""
    CTRL = 0        # W: Ctrl bits (start, clear_refs, clear_error, reset_load are pulses)
    STATUS = 1      # R: Status bits
    D_IN = 2        # RW: input width d_in (multiple of bitmap_word)
    D_OUT = 3       # RW: output width d_out (multiple of lanes)
    TOKENS = 4      # RW: tokens in the run (the run is done when all have left)
    TAU = 5         # RW: delta threshold (int8 units)
    MODE = 6        # RW: bit 0 delta_enable (0: dense baseline), bit 1 wide output (int16)
    CYCLES = 8      # R: cycles from start to done
    BUSY = 9        # R: cycles the PE array accepted an operand beat
    MAC_LANES = 10  # R: lane-cycles doing a multiply-accumulate (active rows x lanes)
    TOKENS_OUT = 11 # R: tokens emitted
    PAIRS = 12      # R: (index, value) pairs the PE array processed (per chunk)


REGISTERS = {r.name: int(r) for r in Reg}


class Ctrl(py_enum.IntFlag):
    START = 1
    CLEAR_REFS = 2
    CLEAR_ERROR = 4
    RESET_LOAD = 8


class Status(py_enum.IntFlag):
    RUNNING = 1
    DONE = 2
    ERROR = 4
    ERR_CONFIG = 1 << 8     # shape registers out of range (the run does not start)
    ERR_TOKEN = 1 << 9      # a token's length disagreed with d_in (delta encoder)
    ERR_STREAM = 1 << 10    # bitmap and value counts disagreed (bitmap decoder)
    ERR_OVERFLOW = 1 << 11  # an accumulator or y = y_ref + acc left its format


def engine_limits(config):
    """Largest shapes the engine accepts: ``(max d_in, max d_out, weight words per row)``."""
    return config.max_reduction, config.max_reduction, config.weight_depth // config.rows


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


def _log2(n):
    return n.bit_length() - 1


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


def linear_output_layout(config):
    """One output beat: ``lanes`` consecutive channels of a token, ``last`` on its final beat."""
    return data.StructLayout({"data": data.ArrayLayout(signed(16), config.lanes), "last": 1})


class LinearEngine(wiring.Component):
    """Sparse (delta) linear projection on the shared PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``rows`` must be a power of two (chunk arithmetic is a shift).
    external_pe : bool
        Drive a PE array outside the engine through ``pe_i``/``pe_o`` (:func:`pe_ports`)
        instead of an array of its own.

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.delta_encoder.token_layout` beats: int8 tokens,
        ``bitmap_word`` elements per beat, with their spatial position.
    o : ``Out(stream)`` of output rows ``{"data": lanes x int16, "last"}``: ``d_out / lanes``
        beats per token in channel order, ``last`` on a token's final beat; values are
        saturated to int8, or int16 in wide mode.
    w_load, c_load : ``In(stream)``
        Weight and channel-constant loading (see :func:`weight_words`, :func:`channel_words`).
    csr_addr, csr_w_en, csr_w_data, csr_r_data :
        Register port: a write takes effect at the clock edge; ``csr_r_data`` shows the
        register at ``csr_addr`` one cycle later.
    """

    def __init__(self, config, *, external_pe=False):
        R = config.rows
        if R & (R - 1):
            raise ValueError("LinearEngine needs a power-of-two number of rows, not {!r}"
                             .format(R))
        self._config = config
        self._external_pe = external_pe
        super().__init__({
            **(pe_ports(config) if external_pe else {}),
            "i": In(stream.Signature(token_layout(config))),
            "o": Out(stream.Signature(linear_output_layout(config))),
            "w_load": In(stream.Signature(weight_load_layout(config))),
            "c_load": In(stream.Signature(channel_load_layout(config))),
            **register_port(4),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, V, K = cfg.rows, cfg.lanes, cfg.decode_width
        E = cfg.bitmap_word
        max_d, max_out, w_depth = engine_limits(cfg)
        max_slices = max_out // V
        acc_fmt = cfg.acc_format
        acc_shape = arith.shape_of(acc_fmt)
        op_shape = arith.shape_of(cfg.operand_format)

        m.submodules.encoder = enc = DeltaEncoder(cfg)
        m.submodules.decoder = dec = BitmapDecoder(cfg)
        pe = use_pe(m, self, cfg, self._external_pe)

        # ---- registers ----------------------------------------------------------------
        d_in = Signal(range(max_d + 1))
        d_out = Signal(range(max_out + 1))
        tokens = Signal(32)
        tau = Signal(8)
        delta_enable = Signal(init=1)
        wide = Signal()
        running, done = Signal(), Signal()
        err_config, err_token, err_stream, err_ovf = Signal(), Signal(), Signal(), Signal()
        cycles, busy, mac_lanes, tokens_out, pairs = (Signal(32, name=n) for n in
                                                      ("cycles", "busy", "mac_lanes",
                                                       "tokens_out", "pairs"))
        words = Signal(range(max_d // E + 2))
        slices = Signal(range(max_slices + 2))
        chunks = Signal(range(max_slices + 2))
        m.d.comb += [words.eq(d_in >> _log2(E)), slices.eq(d_out >> _log2(V)),
                     chunks.eq((slices + R - 1) >> _log2(R))]
        config_ok = ((d_in != 0) & (d_in[:_log2(E)] == 0) & (d_in <= max_d)
                     & (d_out != 0) & (d_out[:_log2(V)] == 0) & (d_out <= max_out)
                     & (chunks * d_in <= w_depth))
        start, clear_error, reset_load = Signal(), Signal(), Signal()
        m.d.comb += [enc.words.eq(words), enc.tau.eq(tau), enc.delta_enable.eq(delta_enable)]

        with m.If(self.csr_w_en):
            with m.Switch(self.csr_addr):
                with m.Case(Reg.CTRL):
                    m.d.comb += [start.eq(self.csr_w_data[0]),
                                 enc.clear_refs.eq(self.csr_w_data[1]),
                                 clear_error.eq(self.csr_w_data[2]),
                                 reset_load.eq(self.csr_w_data[3])]
                with m.Case(Reg.D_IN):
                    m.d.sync += d_in.eq(self.csr_w_data)
                with m.Case(Reg.D_OUT):
                    m.d.sync += d_out.eq(self.csr_w_data)
                with m.Case(Reg.TOKENS):
                    m.d.sync += tokens.eq(self.csr_w_data)
                with m.Case(Reg.TAU):
                    m.d.sync += tau.eq(self.csr_w_data)
                with m.Case(Reg.MODE):
                    m.d.sync += [delta_enable.eq(self.csr_w_data[0]), wide.eq(self.csr_w_data[1])]
        m.d.comb += enc.clear_error.eq(clear_error)

        status = Cat(running, done, err_config | err_token | err_stream | err_ovf,
                     Const(0, 5), err_config, err_token, err_stream, err_ovf)
        register_reads(m, self, (
            (Reg.STATUS, status), (Reg.D_IN, d_in), (Reg.D_OUT, d_out), (Reg.TOKENS, tokens),
            (Reg.TAU, tau), (Reg.MODE, Cat(delta_enable, wide)), (Reg.CYCLES, cycles),
            (Reg.BUSY, busy), (Reg.MAC_LANES, mac_lanes), (Reg.TOKENS_OUT, tokens_out),
            (Reg.PAIRS, pairs)))

        with m.If(clear_error):
            m.d.sync += [err_config.eq(0), err_stream.eq(0), err_ovf.eq(0)]
        m.d.comb += err_token.eq(enc.error)
        with m.If(dec.error):
            m.d.sync += err_stream.eq(1)
        with m.If(start):
            m.d.sync += [cycles.eq(0), busy.eq(0), mac_lanes.eq(0), tokens_out.eq(0),
                         pairs.eq(0), done.eq(0)]
            with m.If(config_ok):
                m.d.sync += running.eq(1)
            with m.Else():
                m.d.sync += [err_config.eq(1), running.eq(0)]
        with m.Elif(running):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(tokens_out == tokens):
                m.d.sync += [running.eq(0), done.eq(1)]

        # ---- parameter loading -----------------------------------------------------------
        w_mems = []
        for r in range(R):
            mem = Memory(shape=data.ArrayLayout(arith.shape_of(contract.WEIGHT), V),
                         depth=w_depth, init=[])
            m.submodules[f"weights_{r}"] = mem
            w_mems.append(mem)
        w_row = Signal(range(R))
        w_addr = Signal(range(w_depth + 1))
        m.d.comb += self.w_load.ready.eq(~running)
        for r, mem in enumerate(w_mems):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(self.w_load.payload.data),
                         wp.en.eq(self.w_load.valid & self.w_load.ready & (w_row == r)
                                  & (w_addr < w_depth))]
        with m.If(reset_load):
            m.d.sync += [w_row.eq(0), w_addr.eq(0)]
        with m.Elif(self.w_load.valid & self.w_load.ready):
            m.d.sync += w_row.eq(Mux(w_row == R - 1, 0, w_row + 1))
            with m.If(w_row == R - 1):
                m.d.sync += w_addr.eq(w_addr + 1)

        c_layout = self.c_load.payload.shape()
        c_mem = Memory(shape=c_layout, depth=max_slices, init=[])
        m.submodules.channels = c_mem
        c_addr = Signal(range(max_slices + 1))
        c_wp = c_mem.write_port()
        m.d.comb += [self.c_load.ready.eq(~running), c_wp.addr.eq(c_addr),
                     c_wp.data.eq(self.c_load.payload),
                     c_wp.en.eq(self.c_load.valid & self.c_load.ready & (c_addr < max_slices))]
        with m.If(reset_load):
            m.d.sync += c_addr.eq(0)
        with m.Elif(self.c_load.valid & self.c_load.ready):
            m.d.sync += c_addr.eq(c_addr + 1)

        # ---- encoder -> decoder --------------------------------------------------------
        m.d.comb += [enc.i.valid.eq(self.i.valid & running), enc.i.payload.eq(self.i.payload),
                     self.i.ready.eq(enc.i.ready & running)]
        connect(m, enc.o_map, dec.i_map)
        connect(m, enc.o_val, dec.i_val)

        # ---- pair buffer: K interleaved banks, two token slots ---------------------------
        slot_pairs = max_d                  # a token sends at most d_in pairs
        pair_layout = data.StructLayout({"index": unsigned(cfg.index_bits), "value": op_shape})
        banks = []
        for q in range(K):
            mem = Memory(shape=pair_layout, depth=2 * (-(-slot_pairs // K)), init=[])
            m.submodules[f"pairs_{q}"] = mem
            banks.append(mem)
        bank_depth = -(-slot_pairs // K)
        w_slot = Signal()                   # slot being written
        w_count = Signal(range(slot_pairs + K + 1))
        full = Signal(2)                    # slot holds a complete token
        slot_n = [Signal(range(slot_pairs + 1), name=f"slot_n_{s}") for s in range(2)]
        slot_pos = [Signal(cfg.position_bits, name=f"slot_pos_{s}") for s in range(2)]
        slot_dense = [Signal(name=f"slot_dense_{s}") for s in range(2)]
        free = ~full.bit_select(w_slot, 1)
        take = dec.o.valid & free & enc.o_tok.valid
        m.d.comb += dec.o.ready.eq(free & enc.o_tok.valid)
        beat = dec.o.payload
        if K & (K - 1):
            raise ValueError("LinearEngine needs a power-of-two decode_width, not {!r}".format(K))
        kb = _log2(K)
        for q in range(K):
            wp = banks[q].write_port()
            # Entry j of the beat is pair w_count + j: bank (w_count + j) % K, address
            # (w_count + j) // K. Bank q takes entry j = (q - w_count) % K.
            j = Signal(range(K), name=f"entry_{q}")
            m.d.comb += j.eq((q - w_count)[:kb] if K > 1 else 0)
            m.d.comb += [wp.addr.eq(w_slot * bank_depth + ((w_count + j) >> kb)),
                         wp.data.index.eq(beat.index[j]), wp.data.value.eq(beat.value[j]),
                         wp.en.eq(take & (j < beat.count))]
        with m.If(take):
            with m.If(beat.last):
                m.d.sync += [w_count.eq(0), w_slot.eq(~w_slot),
                             full.bit_select(w_slot, 1).eq(1)]
                for s in range(2):
                    with m.If(w_slot == s):
                        m.d.sync += [slot_n[s].eq(w_count + beat.count),
                                     slot_pos[s].eq(enc.o_tok.payload.position),
                                     slot_dense[s].eq(enc.o_tok.payload.dense)]
            with m.Else():
                m.d.sync += w_count.eq(w_count + beat.count)
        m.d.comb += enc.o_tok.ready.eq(take & beat.last)

        # ---- feeder: S0 sequencer -> S1 pair read -> S2 weight read -> PE ---------------
        tags = fifo.SyncFIFO(width=cfg.position_bits + 2 + len(chunks), depth=4)
        m.submodules.tags = tags
        r_slot = Signal()
        chunk = Signal.like(chunks)
        p = Signal(range(slot_pairs + 1))
        s1_valid, s1_first, s1_last, s1_null = Signal(), Signal(), Signal(), Signal()
        s1_chunk = Signal.like(chunks)
        s1_bank = Signal(range(K))
        s2_valid, s2_first, s2_last, s2_null = Signal(), Signal(), Signal(), Signal()
        s2_chunk = Signal.like(chunks)
        s2_value = Signal(op_shape)
        s1_pos, s2_pos = Signal(cfg.position_bits), Signal(cfg.position_bits)
        s1_dense, s2_dense = Signal(), Signal()
        adv = Signal()
        m.d.comb += adv.eq((~s2_valid | pe.i.ready) & ~(s2_valid & s2_last & ~tags.w_rdy))

        n_pairs = Mux(r_slot, slot_n[1], slot_n[0])
        have = full.bit_select(r_slot, 1)
        steps = Mux(n_pairs == 0, 1, n_pairs)       # an empty token still closes each chunk
        s0_valid = have & running
        s0_last = p == steps - 1
        pair_rp = [b.read_port(transparent_for=()) for b in banks]
        for q, rp in enumerate(pair_rp):
            m.d.comb += [rp.addr.eq(r_slot * bank_depth + (p >> kb)), rp.en.eq(adv)]
        w_rps = [mem.read_port() for mem in w_mems]
        with m.If(adv):
            m.d.sync += [s1_valid.eq(s0_valid), s1_first.eq(p == 0), s1_last.eq(s0_last),
                         s1_null.eq(n_pairs == 0), s1_chunk.eq(chunk),
                         s1_bank.eq(p[:kb] if K > 1 else 0),
                         s1_pos.eq(Mux(r_slot, slot_pos[1], slot_pos[0])),
                         s1_dense.eq(Mux(r_slot, slot_dense[1], slot_dense[0]))]
            with m.If(s0_valid):
                with m.If(s0_last):
                    m.d.sync += p.eq(0)
                    with m.If(chunk == chunks - 1):
                        m.d.sync += [chunk.eq(0), r_slot.eq(~r_slot),
                                     full.bit_select(r_slot, 1).eq(0)]
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
                with m.Else():
                    m.d.sync += p.eq(p + 1)
        pair = Signal(pair_layout)
        with m.Switch(s1_bank):
            for q in range(K):
                with m.Case(q):
                    m.d.comb += pair.eq(pair_rp[q].data)
        for rp in w_rps:
            m.d.comb += [rp.addr.eq(s1_chunk * d_in + pair.index), rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                         s2_null.eq(s1_null), s2_chunk.eq(s1_chunk), s2_value.eq(pair.value),
                         s2_pos.eq(s1_pos), s2_dense.eq(s1_dense)]
        # The slot is freed when S0 leaves it; its tag travels with the beats (the writer
        # may refill the slot while S1/S2 still hold the token's last beats).
        active_rows = Signal(range(R + 1))
        rem = slices - s2_chunk * R
        m.d.comb += active_rows.eq(Mux(rem >= R, R, rem))
        m.d.comb += [pe.i.valid.eq(s2_valid), pe.i.payload.eq(pack_layout(
            m, pe.i.payload.shape(),
            {"route": Route.SHARED_SCALAR, "scalar": [s2_value], "clear": s2_first,
             "last": s2_last, "bypass": 1,
             "vector": [[w_rps[r].data[l] for l in range(V)] for r in range(R)],
             "mask": [Mux((r < active_rows) & ~s2_null, (1 << V) - 1, 0) for r in range(R)]}))]
        fire = pe.i.valid & pe.i.ready
        with m.If(fire & running):
            m.d.sync += busy.eq(busy + 1)
            with m.If(~s2_null):
                m.d.sync += [mac_lanes.eq(mac_lanes + active_rows * V), pairs.eq(pairs + 1)]
        m.d.comb += [tags.w_en.eq(fire & s2_last),
                     tags.w_data.eq(Cat(s2_pos, s2_dense, s2_chunk == chunks - 1, s2_chunk))]

        # ---- output stage: O0 accept row + reads -> O1 add, write back, multiply -> O2 ----
        y_mem = Memory(shape=data.ArrayLayout(acc_shape, V),
                       depth=cfg.max_positions * max_slices, init=[])
        m.submodules.y_ref = y_mem
        y_rp = y_mem.read_port(transparent_for=())
        y_wp = y_mem.write_port()
        c_rp = c_mem.read_port()
        t_pos = tags.r_data[:cfg.position_bits]
        t_dense = tags.r_data[cfg.position_bits]
        t_tok_last = tags.r_data[cfg.position_bits + 1]
        t_chunk = tags.r_data[cfg.position_bits + 2:]
        o_adv = ~self.o.valid | self.o.ready
        row = pe.o.payload
        slice_ = Signal(range(max_slices + R + 1))
        m.d.comb += slice_.eq(t_chunk * R + row.row)
        o0 = pe.o.valid & tags.r_rdy
        m.d.comb += [pe.o.ready.eq(o_adv & tags.r_rdy), tags.r_en.eq(o0 & o_adv & row.last)]
        m.d.comb += [y_rp.addr.eq(t_pos * max_slices + slice_), y_rp.en.eq(o_adv),
                     c_rp.addr.eq(slice_), c_rp.en.eq(o_adv)]
        o1_valid, o1_keep, o1_last, o1_dense, o1_ovf = (Signal(name=f"o1_{n}") for n in
                                                        ("valid", "keep", "last", "dense", "ovf"))
        o1_raw = Signal(data.ArrayLayout(acc_shape, V))
        o1_addr = Signal.like(y_rp.addr)
        with m.If(o_adv):
            m.d.sync += [o1_valid.eq(o0), o1_keep.eq(slice_ < slices),
                         o1_last.eq(t_tok_last & (slice_ == slices - 1)), o1_dense.eq(t_dense),
                         o1_raw.eq(row.data), o1_addr.eq(y_rp.addr), o1_ovf.eq(row.overflow)]
        ys = []
        y_ovf = Signal()
        ovf_terms = []
        for l in range(V):
            base = Mux(o1_dense, c_rp.data.bias[l], y_rp.data[l])
            y = Signal(signed(acc_fmt.bits + 1), name=f"y_{l}")
            m.d.comb += y.eq(base + o1_raw[l])
            ys.append(y)
            ovf_terms.append(~arith.fits(y, acc_fmt))
        m.d.comb += y_ovf.eq(Cat(*ovf_terms).any() | o1_ovf)
        m.d.comb += [y_wp.addr.eq(o1_addr), y_wp.en.eq(o_adv & o1_valid & o1_keep)]
        m.d.comb += [y_wp.data[l].eq(ys[l][:acc_fmt.bits].as_signed()) for l in range(V)]
        prod_shape = arith.shape_of(contract.product_format(acc_fmt, contract.REQ_MULT))
        o2_valid, o2_last = Signal(), Signal()
        o2_prod = [Signal(prod_shape, name=f"o2_prod_{l}") for l in range(V)]
        o2_shift = [Signal(arith.shape_of(contract.REQ_SHIFT), name=f"o2_shift_{l}")
                    for l in range(V)]
        with m.If(o_adv):
            m.d.sync += [o2_valid.eq(o1_valid & o1_keep), o2_last.eq(o1_last)]
            for l in range(V):
                m.d.sync += [o2_prod[l].eq(ys[l][:acc_fmt.bits].as_signed()
                                           * c_rp.data.mult[l]),
                             o2_shift[l].eq(c_rp.data.shift[l])]
            with m.If(o1_valid & o1_keep & y_ovf & running):
                m.d.sync += err_ovf.eq(1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
            with m.If(self.o.payload.last):
                m.d.sync += tokens_out.eq(tokens_out + 1)
        with m.If(o_adv & o2_valid):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(o2_last)]
            for l in range(V):
                narrow = arith.requantize_product(o2_prod[l], o2_shift[l], contract.ACT)
                wide_v = arith.requantize_product(o2_prod[l], o2_shift[l], contract.RESID)
                m.d.sync += self.o.payload.data[l].eq(Mux(wide, wide_v, narrow))
        return m
