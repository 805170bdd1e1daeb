"""The run-through datapath: QKV projection feeding attention on one shared PE array.

::

    tokens -> SequenceGate -> LinearEngine "qkv" (delta QKV projection)
                                   --activation beats--> AttentionEngine "attention" -> o
                                   \\                           /
                                    `---- PEArbiter -- one PEArray

An instance of :class:`hw.pipeline.Pipeline`. The projection's output goes straight into the
attention engine's QKV buffers (no host round trip). Both engines issue accumulations to the one
array through :class:`hw.pe_arbiter.PEArbiter`, which switches between them at accumulation
boundaries, round robin. The attention engine has two sequence slots, so the projection of
sequence ``s + 1`` runs while attention works on sequence ``s``: when tokens are few the
projection dominates and attention fills its gaps, when they are many attention dominates and
the projection fills the gaps (the softmax tails, the wait for a sequence's last token), and the
array stays busy either way.

No deadlock: the projection's results always drain, because a token of sequence ``s`` is let
into the projection only once sequence ``s - 2`` has released its slot (the attention engine's
``credit``, :class:`hw.pipeline.SequenceGate`), so the slot its results go to is free; the
attention engine only opens an accumulation whose results it can take.

Registers: window ``qkv`` (:data:`hw.linear_engine.REGISTERS`) at 0, window ``attention``
(:data:`hw.attention_engine.REGISTERS`) after it (:meth:`Pipeline.addr`). Program the projection
with ``d_out = 3 x heads x head_dim`` and ``tokens = sequences x N``.
"""

from hw.attention_engine import AttentionEngine
from hw.linear_engine import LinearEngine
from hw.pipeline import Pipeline

__all__ = ["RunThrough", "LinearTop", "AttentionTop"]


class RunThrough(Pipeline):
    """Linear projection and sparse attention back to back on one PE array.

    Ports: ``i`` (the QKV layer's input tokens, :func:`hw.delta_encoder.token_layout`),
    ``qkv.w_load``, ``qkv.c_load``, ``attention.masks``, ``o``
    (:func:`hw.attention_engine.attention_output_layout`), ``csr``.
    """

    def __init__(self, config):
        # The QKV projection of a block: max_d in, 3 max_d out (its weights, references and
        # y_ref sized so, as in hw.block).
        d = config.max_d
        super().__init__(config, [("qkv", LinearEngine(config, max_out=3 * d, max_in=d)),
                                  ("attention", AttentionEngine(config))])


class LinearTop(Pipeline):
    """The linear engine alone on its PE array (stage ``linear``)."""

    def __init__(self, config):
        super().__init__(config, [("linear", LinearEngine(config))])


class AttentionTop(Pipeline):
    """The attention engine alone on its PE array (stage ``attention``)."""

    def __init__(self, config):
        super().__init__(config, [("attention", AttentionEngine(config))])
