"""MambaRec's user-item depth: official 4 LightGCN layers by default, MGCN's 2 as the documented option
(the switch that explains MambaRec's slow fit on synth-mm, docs/multimodal-models.md "MambaRec on synth-mm")."""
import pytest
import torch

from recbole_ext.models.layers.graph import lightgcn_mean
from recbole_ext.models.multimodal.mambarec import MambaRec
from recbole_ext.models.multimodal.mgcn import MGCN
from recbole_ext.testing.multimodal_toy import planted_clusters, toy_config


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 25, 300, n_clusters=3, image_dim=48, text_dim=16, seed=0)


@pytest.mark.parametrize("cls, overrides, depth", [(MambaRec, {}, 4), (MambaRec, {"n_ui_layers": 2}, 2),
                                                   (MGCN, {}, 2), (MGCN, {"n_ui_layers": 4}, 4)])
def test_user_item_view_uses_the_configured_depth(cls, overrides, depth, tiny):
    torch.manual_seed(0)
    model = cls(toy_config(embedding_size=8, **overrides), tiny).eval()
    ego = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    with torch.no_grad():
        content = model.encode()["content"]
        for other in {2, 4} - {depth}:
            assert not torch.allclose(content, lightgcn_mean(model.norm_adj, ego, other), atol=1e-6)
        assert torch.allclose(content, lightgcn_mean(model.norm_adj, ego, depth), atol=1e-6)
    assert model.n_ui_layers == depth
