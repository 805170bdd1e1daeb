"""Test-vector export: the files hold consistent, contract-exact tensors of one layer."""

import json

import numpy as np
import pytest
import torch

from golden import contract, qtorch
from golden.blocks import bitmap_decode_reference
from golden.export import ATTENTION_ARRAYS, LINEAR_ARRAYS, export, load
from golden.sparse import SparseExecution
from golden.subvector import SubvectorAttention

TAU, RHO, V = 2, 0.5, 8


def _t(a):
    return torch.as_tensor(a, dtype=torch.int64)


@pytest.fixture(scope="module")
def exported(small_int_model, tmp_path_factory):
    _, qmodel, clips = small_int_model
    out = tmp_path_factory.mktemp("vectors")
    manifest = export(qmodel, clips[:1], 1, out, tau=TAU, rho=RHO, v=V)
    return qmodel, clips[:1], out, manifest


@pytest.mark.parametrize("name", ["qkv", "proj", "fc1", "fc2"])
def test_linear_vectors_are_consistent(exported, name):
    qmodel, _, out, manifest = exported
    a = {k: _t(v) for k, v in load(out, name).items()}
    assert set(a) == set(LINEAR_ARRAYS)
    n_s = qmodel.cfg.n_s
    # Frame 0 is dense and nothing else is (no pruning): the hardware's dense/delta decision.
    assert torch.equal(a["dense"].bool(), a["frame"] == 0)
    assert torch.equal(a["spatial"], torch.arange(len(a["x"])) % n_s)
    assert torch.equal(a["delta"][a["dense"].bool()], a["x"][a["dense"].bool()])
    sent = a["delta"][~a["dense"].bool()]
    assert int(sent[sent != 0].abs().min()) > TAU                # nothing at or below tau
    assert torch.equal(a["bitmap"].bool(), a["delta"] != 0)
    assert torch.equal(a["acc"], a["base"] + a["delta"] @ a["weight"].T)
    fmt = getattr(qmodel.blocks[1], name).out_fmt
    assert torch.equal(a["out"], qtorch.requantize(a["acc"], a["mult"], a["shift"], fmt))
    assert int(a["weight"].abs().max()) <= contract.WEIGHT.max
    assert manifest["layers"][name]["sent"] == int(a["bitmap"].sum())
    # A delta token's base is the previous output of its position: W r + b at every step.
    for t in range(n_s, 3 * n_s, 7):
        assert torch.equal(a["base"][t], a["acc"][t - n_s])
    # The Δ bitmaps and packed values decode back to the sent elements.
    for t in (0, n_s, len(a["x"]) - 1):
        token = a["delta"][t].tolist()
        pairs = bitmap_decode_reference([token])[0]
        assert pairs == [(i, v) for i, v in enumerate(token) if v != 0]


def test_attention_vectors_are_consistent(exported):
    qmodel, clip, out, _ = exported
    a = {k: (_t(v) if isinstance(v, np.ndarray) else v) for k, v in load(out, "attention").items()}
    assert set(a) == set(ATTENTION_ARRAYS)
    blk = qmodel.blocks[1]
    assert torch.equal(a["scores"], a["q"] @ a["k"].transpose(-2, -1))
    keep = a["keep"].bool()
    assert torch.equal(a["probs"], qtorch.softmax(a["scores"], keep, blk.softmax_mult,
                                                  blk.softmax_shift))
    assert int(a["probs"][~keep].abs().sum()) == 0
    assert torch.equal(a["pv"], a["probs"] @ a["v"])
    assert torch.equal(a["out"], qtorch.requantize(a["pv"], blk.attn_mult, blk.attn_shift))
    # The column masks are the keep mask in sub-vector units (bit b: queries b*V .. b*V+V-1).
    n = keep.shape[-1]
    bits = (a["column_masks"][..., None] >> torch.arange(-(-n // V))) & 1   # [H, N, units]
    assert torch.equal(bits.repeat_interleave(V, -1)[..., :n].transpose(-2, -1).bool(), keep)
    want_pred, _, _ = SubvectorAttention(V, RHO).predict(a["q"][None], a["k"][None])
    assert torch.equal(a["pred"], want_pred[0])
    # About half the sub-vectors are kept, every query keeps some key.
    assert 0.4 < float(keep.double().mean()) < 0.6 and bool(keep.any(-1).all())


def test_manifest_matches_a_plain_sparse_run(exported):
    qmodel, clip, out, manifest = exported
    run = SparseExecution(qmodel.cfg.n_s, tau=TAU, attention=SubvectorAttention(V, RHO))
    assert manifest["logits"] == qmodel(clip, run)[0].tolist()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["layers"]["qkv"]["shapes"]["weight"] == [3 * qmodel.cfg.dim, qmodel.cfg.dim]


def test_dense_export_has_every_token_dense(small_int_model, tmp_path):
    _, qmodel, clips = small_int_model
    export(qmodel, clips[:1], 0, tmp_path, layers=("fc1", "attention"))
    fc1 = load(tmp_path, "fc1")
    assert fc1["dense"].all() and np.array_equal(fc1["delta"], fc1["x"])
    att = load(tmp_path, "attention")
    assert att["keep"].all() and not att["pred"].any()
    with pytest.raises(KeyError, match="No vectors for layer 'qkv'"):
        load(tmp_path, "qkv")


def test_bad_requests_fail_clearly(small_int_model, tmp_path):
    _, qmodel, clips = small_int_model
    with pytest.raises(ValueError, match="block"):
        export(qmodel, clips[:1], qmodel.cfg.depth, tmp_path)
    with pytest.raises(ValueError, match="one clip"):
        export(qmodel, clips[:2], 0, tmp_path)
    with pytest.raises(ValueError, match="Unknown layers"):
        export(qmodel, clips[:1], 0, tmp_path, layers=("qk",))


def test_position_order_export_is_in_unit_order(small_int_model, tmp_path):
    """With the position-major token order the attention vectors come in the hardware's unit
    order: the engine's consecutive-query sub-vectors are then the policy's units, and every
    tensor is the frame-order export's, permuted."""
    from golden.intvidt import Tokens
    from golden.subvector import unit_order
    _, qmodel, clips = small_int_model
    cfg = qmodel.cfg
    m = export(qmodel, clips[:1], 1, tmp_path, rho=RHO, v=V, order="position",
               layers=("attention",))
    assert m["order"] == "position"
    a = {k: (_t(v) if isinstance(v, np.ndarray) else v) for k, v in load(tmp_path, "attention").items()}
    assert set(a) == set(ATTENTION_ARRAYS) | {"order"}
    full = Tokens.full(1, cfg.n_t, cfg.n_s)
    perm = unit_order("position", full.frame, full.spatial, cfg.width // cfg.patch)[0]
    assert torch.equal(a["order"], perm)
    # In unit order, the policy's units are V consecutive queries: the frame-order policy on the
    # permuted Q and K gives the exported mask, and the column masks encode it.
    keep = a["keep"].bool()
    want, _ = SubvectorAttention(V, RHO).keep(0, a["q"][None], a["k"][None])
    assert torch.equal(keep, want[0])
    n = keep.shape[-1]
    bits = (a["column_masks"][..., None] >> torch.arange(-(-n // V))) & 1
    assert torch.equal(bits.repeat_interleave(V, -1)[..., :n].transpose(-2, -1).bool(), keep)
    blk = qmodel.blocks[1]
    assert torch.equal(a["scores"], a["q"] @ a["k"].transpose(-2, -1))
    assert torch.equal(a["out"], qtorch.requantize(qtorch.softmax(a["scores"], keep,
                                                                  blk.softmax_mult,
                                                                  blk.softmax_shift) @ a["v"],
                                                   blk.attn_mult, blk.attn_shift))
