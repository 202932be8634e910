"""FLOP budgets of the paper's Tiny models, counted by fvcore exactly as benchmarks/flops.py counts them."""
import pytest

from csap_zoo.tools.complexity import count_macs, measure_complexity


def _reports():
    return {
        (name, size): measure_complexity(name, size, size, classes)
        for name in ("csap_tiny", "segnext_tiny")
        for size, classes in ((512, 150), (1024, 19))
    }


@pytest.mark.slow
def test_tiny_budgets_and_parts_add_up():
    """One test for the four counts (~10 s of real forwards at 512 and 1024): as two tests sharing a module fixture,
    pytest-xdist could run them on different workers and pay for the counts twice."""
    reports = _reports()
    csap_512, csap_1024 = reports["csap_tiny", 512], reports["csap_tiny", 1024]
    segnext_512 = reports["segnext_tiny", 512]
    assert 4.6 <= csap_512.backbone_gmacs <= 4.7  # MSCAN-T
    assert csap_512.gmacs <= 5.5  # paper: 5.5 GFLOPs (MACs)
    assert csap_1024.gmacs <= 21.5  # paper: 21.5 at 1024x1024, 19 classes
    assert 6.2 <= segnext_512.gmacs <= 6.7  # SegNeXt-T: 6.4-6.6
    assert csap_512.gmacs / segnext_512.gmacs <= 0.84  # the paper's 16.8% saving
    assert csap_512.backbone_gmacs == pytest.approx(segnext_512.backbone_gmacs)

    # the parts add up, in every report
    for report in reports.values():
        assert report.backbone_gmacs > 0 and report.head_gmacs > 0
        assert 0 <= report.upsample_gmacs < 0.2
        assert report.params_m == pytest.approx(report.backbone_params_m + report.head_params_m)


def test_counters_agree_on_a_conv():
    import torch
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(1, 8, 10, 10)
    expected = 8 * 16 * 9 * 10 * 10
    assert count_macs(conv, [x], "fvcore") == expected
    assert count_macs(conv, [x], "torchprofile") == expected
    with pytest.raises(ValueError, match="unknown counter"):
        count_macs(conv, [x], "thop")
