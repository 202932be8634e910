"""csap_zoo.tools.independent_twin: the twin adds only q/k, and the least-squares fit recovers planted ones."""
import pytest
import torch

import csap_zoo
from csap_zoo.tools.independent_twin import fit_qk, independent_twin, independent_twin_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("qk_dim", [1, 2])
def test_fit_qk_recovers_planted_projections(qk_dim):
    gen = torch.Generator().manual_seed(0)
    heads, dim, scale = 2, 6, 0.5
    wq = torch.randn(heads * qk_dim, dim, generator=gen)
    bq = torch.randn(heads * qk_dim, generator=gen)
    wk = torch.randn(heads * qk_dim, dim, generator=gen)
    tokens, cells, targets = [], [], []
    for _ in range(3):
        x = torch.randn(20, dim, generator=gen)
        c = torch.randn(9, dim, generator=gen)
        q = (x @ wq.T + bq).view(20, heads, qk_dim).transpose(0, 1)
        k = (c @ wk.T).view(9, heads, qk_dim).transpose(0, 1)
        logits = scale * q @ k.transpose(-1, -2) + 3.0  # a row constant: invisible to softmax
        tokens.append(x), cells.append(c), targets.append(torch.log_softmax(logits, -1))
    q_w, q_b, k_w, r2 = fit_qk(tokens, cells, targets, heads, qk_dim, scale, iterations=50, ridge=1e-10)
    assert r2 > 0.999
    for x, c, t in zip(tokens, cells, targets):
        q = (x @ q_w.T + q_b).view(20, heads, qk_dim).transpose(0, 1)
        k = (c @ k_w.T).view(9, heads, qk_dim).transpose(0, 1)
        fitted = torch.softmax(scale * q @ k.transpose(-1, -2), -1)
        assert torch.allclose(fitted, t.exp(), atol=2e-3)


def test_twin_copies_every_weight_and_adds_only_qk():
    model = csap_zoo.create_model("csap_tiny", num_classes=5)
    twin = independent_twin_head(model.decode_head)
    base, new = model.decode_head.state_dict(), twin.state_dict()
    for key, value in base.items():
        assert torch.equal(value, new[key]), key
    assert sorted(set(new) - set(base)) == sorted(
        f"blocks.{i}.attn.{p}.{w}" for i in (0, 1) for p in ("q", "k") for w in ("weight", "bias"))
    full = independent_twin(model)
    assert full.config.head.attention == "independent"
    assert model.decode_head.attention_modes == ("propagate", "propagate")  # original untouched
