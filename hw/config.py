"""Generator configuration: one frozen dataclass with named presets.

This module imports no Amaranth so that the golden model, the simulators' testbenches and the
cycle model can read the same configuration as the generator.
"""

from dataclasses import dataclass, field, fields, replace

from golden import contract

__all__ = ["RTSAConfig", "PRESETS", "preset"]


def _positive(name, value, *, power_of_two=False):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("{} must be a positive integer, not {!r}".format(name, value))
    if power_of_two and value & (value - 1):
        raise ValueError("{} must be a power of two, not {!r}".format(name, value))


@dataclass(frozen=True)
class RTSAConfig:
    """Parameters of one generated accelerator.

    Parameters
    ----------
    lanes : int
        ``v``: lanes of a PE row, i.e. the attention sub-vector length.
    rows : int
        ``R``: PE rows of the array.
    requant_lanes : int
        Requantisers in the array's output stage; a row of ``lanes`` results leaves in
        ``lanes // requant_lanes`` cycles (one requantiser is a wide multiplier, so small
        FPGAs share it). Must divide ``lanes``.
    decode_width : int
        ``k``: (index, value) pairs the bitmap decoder emits per cycle, and values per beat of
        the packed value stream.
    bitmap_word : int
        Bits of one word of a delta bitmap stream.
    max_d : int
        Largest token width ``d``.
    mlp_ratio : int
        MLP hidden width over ``d``; with ``max_d`` it sets the longest reduction.
    max_tokens : int
        Largest token count ``N`` of an attention head.
    max_heads : int
        Largest number of attention heads.
    weight_depth : int
        Words of one layer's on-chip weight buffer (one word = one row's ``lanes`` weights;
        the buffer holds ``max_layers`` of them).
    max_positions : int
        Spatial token positions per frame (``n_s``) the linear engine keeps delta references
        for.
    max_layers : int
        Transformer blocks whose weights and constants the stages hold on chip at once; a
        stage's ``layer`` setting selects the block a run uses (:data:`hw.engine.LAYER`).
    requant_steps : int
        Registered steps of the PE array's requantisers (:class:`hw.requantiser.Requantiser`):
        4 computes the product as two registered unsigned partial products (each fits one
        16 x 16 multiplier: a MULT18X18D, an SB_MAC16; the shorter path timing wants), 3
        computes it whole (one multiplier fewer where it is built in LUTs).
    """
    lanes: int = 8
    rows: int = 4
    requant_lanes: int = 8
    decode_width: int = 2
    bitmap_word: int = 16
    max_d: int = 192
    mlp_ratio: int = 4
    max_tokens: int = 512
    max_heads: int = 4
    weight_depth: int = 4096
    max_positions: int = 64
    max_layers: int = 1
    requant_steps: int = 4
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        for f in fields(self):
            if f.name != "name":
                _positive(f.name, getattr(self, f.name))
        _positive("lanes", self.lanes, power_of_two=True)
        _positive("bitmap_word", self.bitmap_word, power_of_two=True)
        if self.requant_steps not in (3, 4):
            raise ValueError("requant_steps must be 3 or 4, not {!r}".format(self.requant_steps))
        if self.lanes % self.requant_lanes:
            raise ValueError("requant_lanes ({!r}) must divide lanes ({!r})"
                             .format(self.requant_lanes, self.lanes))
        if self.decode_width > self.bitmap_word:
            raise ValueError("decode_width ({!r}) cannot exceed bitmap_word ({!r})"
                             .format(self.decode_width, self.bitmap_word))
        if self.max_d % self.max_heads:
            raise ValueError("max_heads ({!r}) must divide max_d ({!r})"
                             .format(self.max_heads, self.max_d))
        # The requantiser's product acc * mult must fit int64 (the golden model's tensors).
        if self.acc_format.bits + contract.REQ_MULT.bits > 62:
            raise ValueError("Accumulators of {} bits are too wide; reduce max_d, mlp_ratio or "
                             "max_tokens".format(self.acc_format.bits))

    # --- Derived quantities: everything below comes from the arithmetic contract. ---------

    @property
    def operand_format(self):
        """Format of every PE multiplier input."""
        return contract.PE_OPERAND

    @property
    def max_reduction(self):
        """Longest dot product the array computes: MLP fc2 input width."""
        return max(self.max_d * self.mlp_ratio, self.max_tokens)

    @property
    def acc_format(self):
        """Accumulator format: no overflow for any delta projection up to ``max_reduction``."""
        return contract.accumulator_format(
            self.operand_format, self.operand_format,
            contract.linear_reduction_terms(self.max_reduction))

    @property
    def out_format(self):
        """Format of requantised outputs."""
        return contract.ACT

    @property
    def index_bits(self):
        """Bits of an element index of a token (``0 .. max_reduction - 1``)."""
        return contract.bits_for(self.max_reduction)

    @property
    def head_dim(self):
        """Attention head dimension of the attention engine's buffers: ``max_d / max_heads``
        (a layer with fewer heads uses ``heads * head_dim`` channels)."""
        return self.max_d // self.max_heads

    @property
    def max_blocks(self):
        """Sub-vectors (row blocks of ``lanes`` queries) per attention column."""
        return -(-self.max_tokens // self.lanes)

    @property
    def block_bits(self):
        return contract.bits_for(self.max_blocks)

    @property
    def column_bits(self):
        return contract.bits_for(self.max_tokens)

    @property
    def position_bits(self):
        return contract.bits_for(self.max_positions)

    @property
    def macs_per_cycle(self):
        return self.rows * self.lanes

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def summary(self):
        return {
            "name": self.name, "lanes": self.lanes, "rows": self.rows,
            "requant_lanes": self.requant_lanes, "decode_width": self.decode_width,
            "bitmap_word": self.bitmap_word, "max_d": self.max_d, "mlp_ratio": self.mlp_ratio,
            "max_tokens": self.max_tokens, "max_heads": self.max_heads,
            "weight_depth": self.weight_depth, "max_positions": self.max_positions,
            "max_layers": self.max_layers, "requant_steps": self.requant_steps,
            "operand_bits": self.operand_format.bits, "acc_bits": self.acc_format.bits,
            "out_bits": self.out_format.bits, "macs_per_cycle": self.macs_per_cycle,
        }


PRESETS = {
    # iCE40UP5K (iCEBreaker): one row of 8 lanes, one shared requantiser (its two partial
    # products and six lanes on the 8 SB_MAC16, two lanes in logic: boards.build).
    "tiny": RTSAConfig(lanes=8, rows=1, requant_lanes=1, decode_width=2, bitmap_word=16,
                       max_d=64, mlp_ratio=4, max_tokens=128, max_heads=2, weight_depth=256,
                       name="tiny"),
    # ECP5-85F (ULX3S): 16 x 8 = 128 lane multipliers plus 8 requantisers of 2 MULT18X18D
    # each = 144 of its 156 multipliers.
    "default": RTSAConfig(lanes=8, rows=16, requant_lanes=8, decode_width=4, bitmap_word=16,
                          max_d=192, mlp_ratio=4, max_tokens=512, max_heads=4,
                          weight_depth=4096, name="default"),
    # Sized for the benchmark VidT (d = 64, MLP 256, 8 frames of 49 positions = 392 tokens,
    # 2 heads, 4 blocks): 8 x 8 = 64 lanes, so every layer width (64, 192, 256) is a whole
    # number of output chunks; the token buffers hold 392 tokens, the delta references 49
    # positions (512 and 64 before: 10.55 against 8.61 Mbit for the whole model with its link,
    # python -m hw.memories --design model_link).
    "vidt": RTSAConfig(lanes=8, rows=8, requant_lanes=8, decode_width=4, bitmap_word=16,
                       max_d=64, mlp_ratio=4, max_tokens=392, max_heads=2, weight_depth=2048,
                       max_positions=49, max_layers=4, name="vidt"),
    # Cycle-model scale (ViT-B-like shapes); generated, simulated, not meant for a small FPGA.
    "large": RTSAConfig(lanes=16, rows=32, requant_lanes=16, decode_width=8, bitmap_word=32,
                        max_d=768, mlp_ratio=4, max_tokens=1568, max_heads=12,
                        weight_depth=65536, max_positions=256, name="large"),
}


def preset(name):
    """The configuration preset called ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError("Unknown preset {!r}; choose one of {}"
                         .format(name, ", ".join(sorted(PRESETS)))) from None
