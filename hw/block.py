"""One VidT transformer block on one PE array.

::

    x (RESID) -> frame -+-> ln1 -> qkv_in -> qkv -> sta_keys -> predict -> attention ->
                        |                               |                            |
                        |                     sta_keys.keys (STA report)             |
                        |    ,-------------------------------------------------------'
                        |    `-> transpose -> proj_in -> proj -> res1 -+->
                        `----- skip (sequences) ---------------------'  |
       ,----------------------------------------------------------------'
       `-+-> ln2 -> fc1_in -> fc1 -> gelu -> fc2_in -> fc2 -> res2 -> sta_act -> o (RESID)
         `------------------- skip (tokens) -------------'               |
                                                               sta_act.act (STA report)

    predict.masks -> attention.masks (inside)

The golden model's block (:class:`golden.intvidt.IntBlock`, :func:`golden.vidt.block_dataflow`)
stage for stage: LayerNorm (:class:`hw.layernorm.LayerNorm`), the four token-wise layers as
delta projections (:class:`hw.linear_engine.LinearEngine`, each with its own references per
spatial position), sub-vector sparse attention (:class:`hw.attention_engine.AttentionEngine`)
with its masks from the on-chip predictor (:class:`hw.predictor.Predictor`: pooled-query
products on the array, top-K selection), the transposing buffer that turns attention's
dim-major output into tokens (:class:`hw.transpose.Transpose`), GELU (:class:`hw.gelu.GELU`)
and the two residual adds (:class:`hw.residual.ResidualAdd`, fed by the pipeline's skip paths,
behind a :class:`hw.framer.Framer` that makes every input token ``d / lanes`` beats long, so
that a malformed token cannot leave the two sides of a residual a beat apart). ``*_in`` stages
(:class:`hw.to_tokens.ToTokens`) pack activation beats into the projections' token beats and
number the positions (``t mod positions``, or a loaded list for the ragged token sets STA
pruning leaves). ``sta_keys`` and ``sta_act`` (:mod:`hw.sta_report`) report, in a stage block,
what the host's STA selection needs: each token's keys summed over heads and its ``sum |x|``.

Every matrix product is a vector-scalar product on the one :class:`hw.pe_array.PEArray`: the
four projections, the predictor and attention are its six clients
(:class:`hw.pe_arbiter.PEArbiter`, each behind a :class:`hw.pipeline.ResultReserve`). The
element-wise stages run beside the array.

Skip paths: ``res1`` needs a sequence's inputs until attention has seen the whole sequence,
so its FIFO holds ``attention_skip`` sequences of ``max_tokens`` tokens (at least one, or the
block deadlocks: the tokens that complete a sequence could not enter); ``res2`` needs only the
tokens inside the MLP, ``mlp_skip`` of them.

Program: the projections in wide mode for ``proj`` and ``fc2`` (RESID outputs); every stage's
``tokens`` the run's token count (attention and transpose: ``tokens`` per sequence and
``sequences``; predictor: ``keep`` too); ``*_in.positions`` the spatial positions per frame.
Tokens enter frame-major, sequence after sequence.
"""

from hw.attention_engine import AttentionEngine
from hw.framer import Framer
from hw.gelu import GELU
from hw.layernorm import LayerNorm
from hw.linear_engine import LinearEngine
from hw.pipeline import Pipeline
from hw.predictor import Predictor
from hw.residual import ResidualAdd
from hw.sta_report import ActReport, KeyReport
from hw.to_tokens import ToTokens
from hw.transpose import Transpose

__all__ = ["Block", "BLOCK_STAGES", "BLOCK_LINKS", "PROJECTIONS", "block_stages", "block_skips"]

#: The four projections, in block order (each is stage ``name`` behind stage ``name_in``).
PROJECTIONS = ("qkv", "proj", "fc1", "fc2")


def block_stages(config):
    """The block's stages, ``(name, stage)`` in order (:data:`BLOCK_STAGES`); each projection
    sized for its layer (outputs ``3 max_d``, ``max_d``, ``mlp_ratio max_d``, ``max_d``, inputs
    ``max_d`` but fc2's ``mlp_ratio max_d``: its weights, delta references and ``y_ref``)."""
    d, mlp = config.max_d, config.mlp_ratio * config.max_d
    return [
        ("frame", Framer(config)),
        ("ln1", LayerNorm(config)),
        ("qkv_in", ToTokens(config)), ("qkv", LinearEngine(config, max_out=3 * d, max_in=d)),
        ("sta_keys", KeyReport(config)),
        ("predict", Predictor(config)), ("attention", AttentionEngine(config)),
        ("transpose", Transpose(config)),
        ("proj_in", ToTokens(config)), ("proj", LinearEngine(config, max_out=d, max_in=d)),
        ("res1", ResidualAdd(config)),
        ("ln2", LayerNorm(config)),
        ("fc1_in", ToTokens(config)), ("fc1", LinearEngine(config, max_out=mlp, max_in=d)),
        ("gelu", GELU(config)),
        ("fc2_in", ToTokens(config)), ("fc2", LinearEngine(config, max_out=d, max_in=mlp)),
        ("res2", ResidualAdd(config)),
        ("sta_act", ActReport(config)),
    ]


#: The predictor's masks feed the attention engine inside the block.
BLOCK_LINKS = (("predict", "masks", "attention", "masks"),)


def block_skips(config, attention_skip=2, mlp_skip=8):
    """The block's two skip paths (see :class:`Block`), checked."""
    for what, n in (("attention_skip", attention_skip), ("mlp_skip", mlp_skip)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError("{} must be a positive integer, not {!r}".format(what, n))
    beats = config.max_d // config.lanes           # beats of one token
    return [("ln1", "res1", attention_skip * config.max_tokens * beats),
            ("ln2", "res2", mlp_skip * beats)]


#: Stage names in order.
BLOCK_STAGES = ("frame", "ln1", "qkv_in", "qkv", "sta_keys", "predict", "attention", "transpose",
                "proj_in", "proj", "res1", "ln2", "fc1_in", "fc1", "gelu", "fc2_in", "fc2", "res2",
                "sta_act")


class Block(Pipeline):
    """A whole transformer block on one PE array (see the module docstring).

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    attention_skip : int
        Sequences the attention residual's skip FIFO holds (>= 1).
    mlp_skip : int
        Tokens the MLP residual's skip FIFO holds (>= 1).

    Ports: ``i`` and ``o`` (RESID tokens, :func:`hw.linear_engine.activation_layout`), the
    stages' loading ports (``ln1.p_load``, ``qkv.w_load``, ``qkv.c_load``, ...,
    ``gelu.t_load``, ``qkv_in.pos_load``, ...), the STA reports (``sta_keys.keys``,
    ``sta_act.act``), ``csr``.
    """

    def __init__(self, config, *, attention_skip=2, mlp_skip=8):
        skips = block_skips(config, attention_skip, mlp_skip)
        stages = block_stages(config)
        assert tuple(n for n, _ in stages) == BLOCK_STAGES
        super().__init__(config, stages, skips=skips, links=BLOCK_LINKS)
