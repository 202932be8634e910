"""CSAP head: propagation semantics, the factorised fast path, gradients, modes and input checks."""
import pytest
import torch
import torch.nn.functional as F

from csap_zoo.models.heads.csap import CSAPHead, CSAPHeadConfig, propagate_map

CHANNELS = (64, 160, 256)  # MSCAN-T stages 2-4


def make_features(batch=2, grid=(8, 8), seed=0):
    """Stride 8/16/32 features of an input padded to a multiple of 32 (grid: the stride-8 size, multiples of 4)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    sizes = [(h, w), (h // 2, w // 2), (h // 4, w // 4)]
    return [torch.randn(batch, c, *s, generator=gen) for c, s in zip(CHANNELS, sizes)]


@pytest.fixture
def head():
    torch.manual_seed(0)
    return CSAPHead(CHANNELS, num_classes=5).eval()


@pytest.mark.parametrize("propagation", ["bilinear", "nearest"])
@pytest.mark.parametrize("grid", [(16, 16), (12, 20), (4, 12)])
def test_propagated_rows_are_distributions(propagation, grid):
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5, propagation=propagation).eval()
    features = make_features(grid=grid)
    _, maps = head.forward_with_attention(features)
    assert len(maps) == 3
    for feature, attn in zip(features, maps):
        batch, heads, queries, cells = attn.shape
        assert (batch, heads) == (2, 8)
        assert queries == feature.shape[-2] * feature.shape[-1]
        assert cells == maps[-1].shape[-1]
        assert attn.min() >= 0
        torch.testing.assert_close(attn.sum(-1), torch.ones(batch, heads, queries), atol=1e-5, rtol=0)


def test_all_stages_attend_over_the_same_cells_at_512():
    head = CSAPHead(CHANNELS, num_classes=5).eval()
    features = [torch.randn(1, c, s, s) for c, s in zip(CHANNELS, (64, 32, 16))]
    _, maps = head.forward_with_attention(features)
    assert [m.shape[-1] for m in maps] == [64, 64, 64]  # 8x8 cells, as in the paper's setting


def test_propagated_map_is_the_resized_source_map():
    source = torch.softmax(torch.randn(1, 8, 4 * 4, 64), dim=-1)
    up = propagate_map(source, (4, 4), (8, 8), "bilinear")
    grid = source.transpose(2, 3).reshape(1, 8 * 64, 4, 4)
    expected = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected.reshape(1, 8, 64, 64).transpose(2, 3))
    near = propagate_map(source, (4, 4), (8, 8), "nearest")
    # nearest upsampling by 2 copies every source row to a 2x2 block
    torch.testing.assert_close(near.reshape(1, 8, 8, 8, 64)[:, :, 0, 0], source[:, :, 0])
    torch.testing.assert_close(near.reshape(1, 8, 8, 8, 64)[:, :, 1, 1], source[:, :, 0])


@pytest.mark.parametrize("propagation", ["bilinear", "nearest"])
def test_fast_path_equals_materialised_propagation(propagation):
    """The default path mixes values on the source grid and resizes C channels; it must equal applying the
    explicitly resized map to the stage's values."""
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5, propagation=propagation).eval()
    features = make_features(grid=(12, 20))
    outputs, maps = head.forward_stages(features, need_maps=True)
    for i in range(2):
        block, x = head.blocks[i], features[i]
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        normed = block.norm1(tokens)
        cells, _ = block.attn.cells(normed.transpose(1, 2).reshape(b, c, h, w))
        values = block.attn.values(cells)
        mixed = (maps[i] @ values).permute(0, 2, 1, 3).reshape(b, h * w, c)
        tokens = tokens + block.attn.proj(mixed)
        tokens = tokens + block.mlp(block.norm2(tokens))
        torch.testing.assert_close(tokens.transpose(1, 2).reshape(b, c, h, w), outputs[i], atol=1e-5, rtol=1e-5)


def test_shallow_stages_have_no_query_key_in_propagate_mode(head):
    assert head.blocks[2].attn.q is not None and head.blocks[2].attn.k is not None
    for block in head.blocks[:2]:
        assert block.attn.q is None and block.attn.k is None


@pytest.mark.parametrize("stage", [0, 1])
def test_gradients_reach_source_query_and_key_from_shallow_outputs(stage):
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5).train()
    # 16x16 at stride 8 -> 2x2 pooled cells (with a single cell softmax is constant and passes no gradient)
    outputs, _ = head.forward_stages(make_features(grid=(16, 16)))
    outputs[stage].square().mean().backward()
    source = head.blocks[2].attn
    assert source.q.weight.grad is not None and source.q.weight.grad.abs().sum() > 0
    assert source.k.weight.grad is not None and source.k.weight.grad.abs().sum() > 0


def test_independent_mode_computes_per_stage_maps():
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5, attention="independent").eval()
    assert all(b.attn.q is not None for b in head.blocks)
    features = make_features(grid=(16, 16))
    logits, maps = head.forward_with_attention(features)
    assert logits.shape == (2, 5, 16, 16)
    for attn in maps:
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5, rtol=0)
    # an independent stage's map comes from its own features: changing a shallow feature changes its own map
    # but leaves the source map untouched
    # (pre-norm blocks: a new random tensor, since LayerNorm ignores shifts and scales)
    features2 = [torch.randn_like(features[0]), features[1], features[2]]
    _, maps2 = head.forward_with_attention(features2)
    assert not torch.allclose(maps[0], maps2[0])
    torch.testing.assert_close(maps[2], maps2[2])


def test_per_stage_attention_modes():
    head = CSAPHead(CHANNELS, num_classes=5, attention=("independent", "propagate"))
    assert head.blocks[0].attn.q is not None
    assert head.blocks[1].attn.q is None
    assert head(make_features()).shape == (2, 5, 8, 8)


def test_propagated_shallow_output_depends_on_deep_features(head):
    """Propagation means the stride-8 stage's refinement is steered by the deepest stage's attention."""
    features = make_features(grid=(16, 16))
    out1, _ = head.forward_stages(features)
    out2, _ = head.forward_stages([features[0], features[1], torch.randn_like(features[2])])
    assert not torch.allclose(out1[0], out2[0])


def test_logits_shape_and_reset_classifier(head):
    features = make_features(grid=(12, 20))
    assert head(features).shape == (2, 5, 12, 20)
    head.reset_classifier(3)
    assert head(features).shape == (2, 3, 12, 20)
    assert head.num_classes == 3


def test_config_builds_matching_head():
    config = CSAPHeadConfig(channels=96, propagation="nearest", attention="independent", qk_dim=4)
    head = config.build(CHANNELS, num_classes=7)
    assert head.propagation == "nearest"
    assert head.fuse[0].out_channels == 96
    assert head.blocks[0].attn.q.out_features == 8 * 4
    assert head(make_features()).shape[1] == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(propagation="bicubic"), "propagation"),
    (dict(attention="cross"), "attention"),
    (dict(attention=("propagate",)), "attention"),
    (dict(pool_ratios=(4, 2)), "pool_ratios"),
    (dict(num_heads=7), "divisible"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_config_is_a_clear_error(kwargs, message):
    kwargs = {"num_classes": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        CSAPHead(CHANNELS, **kwargs)


def test_wrong_features_are_a_clear_error(head):
    features = make_features()
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        head(features[:2])
    with pytest.raises(ValueError, match="expects feature channels"):
        head([features[0][:, :32], features[1], features[2]])


def test_projecting_before_resize_equals_the_concatenating_fusion(head):
    """project_before_resize (set by optimize_for_inference) must give the reference fusion's logits."""
    torch.manual_seed(0)
    feats = make_features(grid=(16, 20))
    with torch.no_grad():
        head.fuse[1].running_mean.normal_()
        head.fuse[1].running_var.uniform_(0.5, 2.0)
        reference = head(feats)
        head.project_before_resize = True
        try:
            projected = head(feats)
        finally:
            head.project_before_resize = False
    torch.testing.assert_close(projected, reference, rtol=1e-4, atol=1e-4)


def test_projecting_before_resize_in_training_mode_keeps_batch_statistics():
    """In training mode the BatchNorm is not folded (it normalises with batch statistics): both forms agree and
    gradients flow through the projected path."""
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5, dropout=0.0, drop_path=0.0).train()
    feats = [f.requires_grad_() for f in make_features(grid=(16, 20))]
    reference = head(feats)
    head.project_before_resize = True
    projected = head(feats)
    torch.testing.assert_close(projected, reference, rtol=1e-4, atol=1e-4)
    projected.sum().backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats)


def test_reparameterize_folds_the_fusion_norm_once_and_keeps_the_logits(head):
    """reparameterize() (what optimize_for_inference calls) projects before the resize with the BatchNorm folded
    into the projection: same logits as the reference fusion, no norm left to apply per call."""
    import copy

    from csap_zoo.models.fused import FusedConv2d, is_fused

    torch.manual_seed(0)
    feats = make_features(grid=(16, 20))
    with torch.no_grad():
        head.fuse[1].running_mean.normal_()
        head.fuse[1].running_var.uniform_(0.5, 2.0)
        reference = head(feats)
        fast = copy.deepcopy(head)
        assert fast.reparameterize() is fast
        assert fast.project_before_resize and isinstance(fast.fuse[0], FusedConv2d)
        assert isinstance(fast.fuse[1], torch.nn.Identity) and is_fused(fast) and not is_fused(head)
        torch.testing.assert_close(fast(feats), reference, rtol=1e-4, atol=1e-4)
    assert "fuse.1.running_mean" in head.state_dict()  # the original keeps its checkpoint layout


@pytest.mark.parametrize("attention", ["propagate", "independent"])
def test_stage_attention_inputs_are_what_the_blocks_attend_with(attention):
    torch.manual_seed(0)
    head = CSAPHead(CHANNELS, num_classes=5, attention=attention).eval()
    features = make_features(grid=(12, 16))
    with torch.no_grad():
        _, maps = head.forward_with_attention(features)
        stages = head.stage_attention_inputs(features)
    assert [s.grid for s in stages] == [tuple(f.shape[-2:]) for f in features]
    cells = stages[-1].cells.shape[1]
    for stage, feature in zip(stages, features):
        tokens = stage.grid[0] * stage.grid[1]
        assert stage.tokens.shape == (2, tokens, feature.shape[1])
        assert stage.cells.shape == (2, cells, feature.shape[1])
        assert stage.propagated.shape == (2, 8, tokens, cells)
    torch.testing.assert_close(stages[-1].propagated, maps[-1])  # the source's own map
    for i in range(len(features) - 1):
        expected = propagate_map(maps[-1], stages[-1].grid, stages[i].grid, head.propagation)
        torch.testing.assert_close(stages[i].propagated, expected)
        if attention == "propagate":  # the map forward_with_attention reports is the propagated one
            torch.testing.assert_close(stages[i].propagated, maps[i])
