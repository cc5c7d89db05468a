"""MambaRec's fast path against a direct transcription of the spec's equations (loss, gradients, BN state)."""
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.models.multimodal.mambarec import MambaRec
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, NEG_PREFIX, USER_FIELD, planted_clusters, toy_config

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def small():
    ds = planted_clusters(40, 30, 400, n_clusters=4, image_dim=64, text_dim=24, seed=3)
    cfg = toy_config(embedding_size=D, feature_dropout=0.0, train_batch_size=64, mmd_weight=0.15,
                     mmd_kernel_bandwidth=1.5, knn_k=4)

    def build(**overrides):  # same seed -> identical parameters (sparse CSR graphs cannot be deep-copied)
        torch.manual_seed(0)
        return MambaRec({**cfg, **overrides}, ds).double()
    g = torch.Generator().manual_seed(1)
    n = 48  # duplicates on purpose: the official losses keep them
    batch = {USER_FIELD: torch.randint(1, ds.n_users, (n,), generator=g),
             ITEM_FIELD: torch.randint(1, ds.n_items, (n,), generator=g),
             NEG_PREFIX + ITEM_FIELD: torch.randint(1, ds.n_items, (n,), generator=g)}
    return build, batch


def naive_dream(dream, x, bn_states):
    """Five separate branches, two gates as written in spec §1.3, max of the two recalibrations, times U."""
    w, b = dream.branches.weight, dream.branches.bias
    rm, rv = bn_states["branch"]
    branches = []
    for k in range(5):
        s = slice(k * D, (k + 1) * D)
        z = x @ w[s].T + b[s]
        z = F.batch_norm(z, rm[s], rv[s], dream.branch_bn.weight[s], dream.branch_bn.bias[s], True, 0.1, 1e-5)
        branches.append(F.relu(z))
    u = torch.cat(branches, 1)
    r = F.relu(u @ dream.gate_channel.weight.T)
    s = torch.sigmoid(u @ dream.gate_spatial.weight.T)
    m = torch.maximum(u * r, u * s)
    fm, fv = bn_states["fuse"]
    z = (m * u) @ dream.fuse.weight.T + dream.fuse.bias
    return F.relu(F.batch_norm(z, fm, fv, dream.fuse_bn.weight, dream.fuse_bn.bias, True, 0.1, 1e-5))


def naive_infonce(a, b, tau):
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    pos = torch.exp((a * b).sum(1) / tau)
    return (-torch.log(pos / torch.exp(a @ b.T / tau).sum(1))).mean()


def naive_mmd(x, y, sigma):
    def k(a, b):
        return torch.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma ** 2))
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def naive_loss(model, batch, bn_states):
    users, pos, neg = batch[USER_FIELD], batch[ITEM_FIELD], batch[NEG_PREFIX + ITEM_FIELD]
    nu = model.n_users
    fv, ft = model.feature_tables["image"], model.feature_tables["text"]
    pv = (fv[1:] @ model.image_reduce.weight.T + model.image_reduce.bias) @ model.projection["image"].weight.T \
        + model.projection["image"].bias
    pt = ft[1:] @ model.projection["text"].weight.T + model.projection["text"].bias
    ln = model.layer_norm
    pad = torch.zeros(1, D, dtype=pv.dtype)
    xv = torch.cat([pad, F.layer_norm(naive_dream(model.dream["image"], pv, bn_states["image"]), (D,),
                                      ln.weight, ln.bias)])
    xt = torch.cat([pad, F.layer_norm(naive_dream(model.dream["text"], pt, bn_states["text"]), (D,),
                                      ln.weight, ln.bias)])
    ei, eu = model.item_id_embedding.weight, model.user_embedding.weight
    gv, gt = model.purifier_gate["image"], model.purifier_gate["text"]
    hv = ei * torch.sigmoid(xv @ gv.weight.T + gv.bias)
    ht = ei * torch.sigmoid(xt @ gt.weight.T + gt.bias)
    a_hat = model.norm_adj.to_dense().to(pv.dtype)
    r_hat = model.r_hat.to_dense().to(pv.dtype)
    z = torch.cat([eu, ei])
    layers = [z]
    for _ in range(4):
        layers.append(a_hat @ layers[-1])
    c = torch.stack(layers).mean(0)
    hv = model.item_graphs["image"].to_dense().to(pv.dtype) @ hv
    ht = model.item_graphs["text"].to_dense().to(pv.dtype) @ ht
    mv, mt = torch.cat([r_hat @ hv, hv]), torch.cat([r_hat @ ht, ht])
    q1, q2 = model.query_common[0], model.query_common[2]
    q = lambda m: torch.tanh(m @ q1.weight.T + q1.bias) @ q2.weight.T  # noqa: E731
    w = torch.softmax(torch.cat([q(mv), q(mt)], 1), 1)
    common = w[:, :1] * mv + w[:, 1:] * mt
    pv_g, pt_g = model.prefer_gate["image"], model.prefer_gate["text"]
    sv = torch.sigmoid(c @ pv_g.weight.T + pv_g.bias) * (mv - common)
    st = torch.sigmoid(c @ pt_g.weight.T + pt_g.bias) * (mt - common)
    side = (sv + st + common) / 3
    final = c + side
    zu, zi = final[:nu], final[nu:]
    u, p, n = zu[users], zi[pos], zi[neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = 1e-4 * (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (n ** 2).sum()) / 64
    cl = naive_infonce(side[nu:][pos], c[nu:][pos], 0.2) + naive_infonce(side[:nu][users], c[:nu][users], 0.2)
    # the official code runs projection + DREAM a second time for the MMD term (second BN update)
    dv2 = naive_dream(model.dream["image"], pv, bn_states["image"])
    dt2 = naive_dream(model.dream["text"], pt, bn_states["text"])
    mmd = naive_mmd(F.normalize(dv2[pos - 1], dim=1), F.normalize(dt2[pos - 1], dim=1), 1.5)
    return bpr + reg + 0.01 * cl + 0.15 * mmd


def bn_copies(model):
    return {m: {"branch": (model.dream[m].branch_bn.running_mean.clone(), model.dream[m].branch_bn.running_var.clone()),
                "fuse": (model.dream[m].fuse_bn.running_mean.clone(), model.dream[m].fuse_bn.running_var.clone())}
            for m in ("image", "text")}


def test_fast_loss_and_gradients_match_naive_spec(small):
    build, batch = small
    model, reference = build(), build()
    states = bn_copies(reference)
    fast = model.calculate_loss(batch)
    fast.backward()
    slow = naive_loss(reference, batch, states)
    slow.backward()
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-10), (fast.item(), slow.item())
    named_ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, named_ref[name].grad, rtol=1e-7, atol=1e-10), name
    # one fast pass with momentum 1-(0.9)^2 == two official BN updates with momentum 0.1
    for m in ("image", "text"):
        bn = model.dream[m].branch_bn
        assert torch.allclose(bn.running_mean, states[m]["branch"][0], atol=1e-12)
        assert torch.allclose(bn.running_var, states[m]["branch"][1], atol=1e-12)
        assert torch.allclose(model.dream[m].fuse_bn.running_var, states[m]["fuse"][1], atol=1e-12)


def test_fused_image_projection_equals_two_maps(small):
    build, batch = small
    model, other = build(), build(fuse_image_projection=False)
    a, b = model.calculate_loss(batch), other.calculate_loss(batch)
    a.backward()
    b.backward()
    assert torch.allclose(a, b, rtol=1e-10)
    ref = dict(other.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[name].grad, rtol=1e-8, atol=1e-12), name


def test_single_bn_update_variant_uses_official_momentum():
    ds = planted_clusters(20, 15, 100, n_clusters=3, image_dim=32, text_dim=8, seed=0)
    faithful = MambaRec(toy_config(embedding_size=8), ds)
    single = MambaRec(toy_config(embedding_size=8, dream_bn_double_update=False), ds)
    assert faithful.dream["image"].branch_bn.momentum == pytest.approx(0.19)
    assert single.dream["image"].branch_bn.momentum == pytest.approx(0.1)


def _step_state(model, batch):
    torch.manual_seed(7)  # dropout masks
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, \
        {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("cls", ["MGCN", "MambaRec"])
def test_recomputed_activations_give_identical_loss_gradients_and_running_stats(cls):
    from recbole_ext.models.multimodal.mgcn import MGCN

    model_cls = {"MGCN": MGCN, "MambaRec": MambaRec}[cls]
    ds = planted_clusters(40, 30, 400, n_clusters=4, image_dim=64, text_dim=24, seed=3)
    g = torch.Generator().manual_seed(1)
    batch = {USER_FIELD: torch.randint(1, ds.n_users, (48,), generator=g),
             ITEM_FIELD: torch.randint(1, ds.n_items, (48,), generator=g),
             NEG_PREFIX + ITEM_FIELD: torch.randint(1, ds.n_items, (48,), generator=g)}
    states, saved_bytes = [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = model_cls(toy_config(knn_k=4, recompute_activations=recompute), ds)
        sizes = {}

        def pack(t):  # bytes autograd keeps for backward, parameters excluded
            if not isinstance(t, torch.nn.Parameter) and t.layout == torch.strided:
                sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            states.append(_step_state(model, batch))
        saved_bytes.append(sum(sizes.values()))
    (loss0, grads0, bufs0), (loss1, grads1, bufs1) = states
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and bufs0.keys() == bufs1.keys()
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name
    for name in bufs0:  # DREAM's running statistics: updated once, not again by the recomputation
        assert torch.equal(bufs0[name], bufs1[name]), name
    assert saved_bytes[1] < 0.7 * saved_bytes[0], saved_bytes
