"""csap_zoo.models.logits: SegmentorLogits returns what the Segmentor's forward returns for its fixed options."""
import pytest
import torch

import csap_zoo
from csap_zoo.models.logits import SegmentorLogits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=5, backbone_args={"depths": (1, 1, 1, 1)}).eval()


def test_each_option_matches_the_forward_it_fixes(model):
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        assert torch.equal(SegmentorLogits(model)(x), model(x))
        assert torch.equal(SegmentorLogits(model, upsample=False)(x), model(x, upsample=False))
        raw = SegmentorLogits(model, upsample=False, crop=False)(x)
        assert torch.equal(raw, model(x, upsample=False, crop=False))
        assert raw.shape[-2:] == (12, 16)  # the whole input padded to 96x128 (stride 32), at stride 8
        assert torch.equal(SegmentorLogits(model, branch_free=True)(x), model(x))


def test_checked_forward_keeps_the_input_checks_and_branch_free_skips_them(model):
    with pytest.raises(ValueError, match="4-D"):
        SegmentorLogits(model)(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="non-finite"):
        SegmentorLogits(model)(torch.full((1, 3, 64, 64), float("nan")))
    with torch.no_grad():
        assert torch.isnan(SegmentorLogits(model, branch_free=True)(torch.full((1, 3, 64, 64), float("nan")))).all()


def test_clear_errors(model):
    with pytest.raises(ValueError, match="Segmentor"):
        SegmentorLogits(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="upsample=False"):
        SegmentorLogits(model, upsample=True, crop=False)


def test_branch_free_raw_logits_are_the_whole_prepared_input(model):
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        raw = SegmentorLogits(model, upsample=False, crop=False, branch_free=True)(x)
        assert torch.equal(raw, model(x, upsample=False, crop=False))
