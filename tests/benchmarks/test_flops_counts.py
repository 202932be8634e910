"""benchmarks/flops.py counts a backbone once per input: the shared-backbone counts equal measure_complexity's
(each model traced whole), and a backbone is shared only where its input is the same."""
import importlib.util
from pathlib import Path

import pytest

from csap_zoo.tools.complexity import measure_complexity

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flops.py"


def load_script():
    spec = importlib.util.spec_from_file_location("flops_counts_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# one MSCAN block per stage keeps the traces cheap; the models differ in their heads and padding as the real ones do
SHALLOW = {"backbone_args": {"depths": (1, 1, 1, 1)}}
CSAP, SEGNEXT = ("csap_tiny", "csap_tiny", SHALLOW), ("segnext_tiny", "segnext_tiny", SHALLOW)
NEAREST = ("csap_tiny[nearest]", "csap_tiny", {"propagation": "nearest", **SHALLOW})


@pytest.mark.parametrize("size, jobs, traced_backbones", [
    (64, (CSAP, SEGNEXT, NEAREST), 1),  # divisible by 32: CSAP's padding is a no-op, one backbone trace for all
    (80, (CSAP, SEGNEXT), 2),  # CSAP pads 80 to 96, SegNeXt does not pad: two backbone inputs, two traces
])
def test_shared_backbone_counts_equal_whole_model_traces(size, jobs, traced_backbones, one_torch_thread):
    flops = load_script()
    backbones = {}
    for label, name, options in jobs:
        shared = flops.count_fvcore(name, size, size, 6, label=label, backbones=backbones, **options)
        whole = measure_complexity(name, size, size, 6, label=label, **options)
        assert shared == whole, label
        assert shared.backbone_gmacs > 0 and shared.head_gmacs > 0 and shared.upsample_gmacs > 0
    assert len(backbones) == traced_backbones
