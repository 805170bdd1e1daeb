"""The whole VidT on one PE array: embedding, the blocks, the head.

::

    i (pixels - 128) -> embed_in -> embed -> pos -> select -> [block stages] -> route ->
                                                     ^                             |
                                                     |      buffer (TokenBuffer)   |
                                                     `---- o <- [tokens] <- i -----'
                                                                  | head
        -> head_select -> norm -> pool -> head_in -> head -> o (logits)
               ^                                                  |
               `--------------------------------------------------'

One :class:`hw.pipeline.Pipeline`: the tubelet embedding (:class:`hw.linear_engine.LinearEngine`
in wide mode, dense) and the positional add (:class:`hw.pos_add.PosAdd`), the stages of
:class:`hw.block.Block` (their constants for ``max_layers`` blocks on chip), the final
LayerNorm, mean pooling (:class:`hw.mean_pool.MeanPool`) and the classifier (a
:class:`hw.linear_engine.LinearEngine` built with ``logits=True``, whose outputs are the
integer model's logits, :meth:`golden.intvidt.IntVidT.head_forward`), and beside the chain
the token buffer (:class:`hw.token_buffer.TokenBuffer`, a pipeline *side*). Eight clients
share the array: embed, the block's six, head.

A clip runs as one pass per block (:mod:`sim.model_job`). Block 0's tokens come from the
embedding (``select.source`` 0), a later block's from the buffer (``select.source`` 1: the
tokens the previous block left, all of them or, after an STA stage block, those of the keep
list the host loaded through ``buffer.keep_load``). The last block's tokens go on to the head
(``route.dest`` 0), the others' into the buffer (``route.dest`` 1): a middle block's pass
drains the buffer and refills it in place. When STA prunes after the last block (a stage
block: depth 2 or 3), its tokens go into the buffer too, and a head pass drains the kept ones
into the head (``buffer.dest`` 1, ``head_select.source`` 1).

What crosses to the host between passes: the stage blocks' STA reports out
(:mod:`hw.sta_report`: head-summed keys and ``sum |x|`` per token), a keep list in (one index
a beat), and the block's scalar settings; no tokens. The delta references' spatial positions
of the pruned tokens are the projections' position lists, loaded by the host with the keep
list (it knows them from the selection).

Before each pass the host writes the block's ``layer`` and settings and starts the stages the
pass uses. One clip per pass: the pipeline's sequence gate counts only the embedding's input.
"""

from hw.block import BLOCK_LINKS, block_skips, block_stages
from hw.layernorm import LayerNorm
from hw.linear_engine import LinearEngine
from hw.mean_pool import MeanPool
from hw.pipeline import Pipeline
from hw.pos_add import PosAdd
from hw.route import Route, Select
from hw.to_tokens import ToTokens
from hw.token_buffer import TokenBuffer

__all__ = ["Model", "MODEL_FRONT", "MODEL_HEAD", "MODEL_LINKS"]

#: Stages before the block's, and after.
MODEL_FRONT = ("embed_in", "embed", "pos", "select")
MODEL_HEAD = ("route", "head_select", "norm", "pool", "head_in", "head")
#: The token buffer's links: filled by the route, drained into a block or the head.
MODEL_LINKS = (("route", "buffer", "buffer", "i"), ("buffer", "o", "select", "buffer"),
               ("buffer", "head", "head_select", "buffer"))


class Model(Pipeline):
    """The whole model on one PE array (see the module docstring).

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``max_layers`` blocks' constants on chip; ``max_d`` must hold the tubelet width.
    attention_skip, mlp_skip : int
        As for :class:`hw.block.Block`; a pass holds one clip, so the attention residual's
        skip FIFO holds one sequence (``max_tokens`` tokens: 0.40 of 1.06 Mbit at ``vidt``).
    """

    def __init__(self, config, *, attention_skip=1, mlp_skip=8):
        # The embedding, the final LayerNorm and the head hold one layer of constants.
        one = config.replace(max_layers=1)
        # The embedding and the classifier run dense: no delta references.
        front = [("embed_in", ToTokens(config)),
                 ("embed", LinearEngine(one, max_out=config.max_d, delta=False)),
                 ("pos", PosAdd(config)), ("select", Select(config))]
        head = [("route", Route(config)), ("head_select", Select(config)),
                ("norm", LayerNorm(one)), ("pool", MeanPool(config)),
                ("head_in", ToTokens(config)),
                ("head", LinearEngine(one, logits=True, max_in=config.max_d, delta=False))]
        super().__init__(config, front + block_stages(config) + head,
                         skips=block_skips(config, attention_skip, mlp_skip),
                         links=BLOCK_LINKS + MODEL_LINKS,
                         sides=[("buffer", TokenBuffer(config))])
