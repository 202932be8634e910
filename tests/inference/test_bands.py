"""Label maps from low-resolution logits: the shortcut equals resize + arg-max exactly, and skips the work it can."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import csap_zoo.inference.bands as labelmap
from csap_zoo.data.synthetic import region_logits
from csap_zoo.inference.bands import ResizeStep, label_map_bands, resize_rows


def _reference(low, steps):
    """resize_rows through the chain at full size, then the arg-max (ties to the lower class index)."""
    bands = [low]
    for step in steps:
        bands = [torch.cat(list(resize_rows(bands, step.in_size, step.out_size, keep=step.keep,
                                            band_elements=10 ** 9)), dim=2)]
    return bands[0].max(dim=1).indices[0].numpy()


def _labels(low, steps, band_elements=labelmap.BAND_ELEMENTS):
    return np.concatenate(list(label_map_bands(low, steps, band_elements=band_elements)))


def _smooth(classes, h, w, seed, scale=4.0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, classes, max(h // 6, 2), max(w // 6, 2), generator=g)
    low = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False) * scale
    return low + noise * torch.randn(1, classes, h, w, generator=g)


def _confident(classes, h, w, seed, regions=12):
    """Logits of a sure model: a few regions, each with one class well ahead, plus unit noise."""
    return torch.from_numpy(region_logits(classes, h, w, regions=regions, seed=seed))[None]


CHAINS = {
    "x8": ((64, 64), [ResizeStep((64, 64), (512, 512))]),
    "x8 crop": ((64, 86), [ResizeStep((64, 86), (512, 688), (509, 683))]),
    "odd scale": ((13, 17), [ResizeStep((13, 17), (100, 133))]),
    "one row": ((1, 9), [ResizeStep((1, 9), (7, 70))]),
    "down": ((40, 50), [ResizeStep((40, 50), (23, 31))]),
    "two steps up": ((32, 43), [ResizeStep((32, 43), (256, 344), (256, 341)), ResizeStep((256, 341), (384, 512))]),
    "two steps down": ((40, 50), [ResizeStep((40, 50), (320, 400), (317, 399)), ResizeStep((317, 399), (150, 190))]),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("kind", ["smooth", "noisy", "confident"])
def test_label_map_equals_resize_then_argmax(always_shortcut, chain, kind):
    (h, w), steps = CHAINS[chain]
    for classes in (2, 19, 150):
        low = {"smooth": lambda: _smooth(classes, h, w, seed=classes),
               "noisy": lambda: _smooth(classes, h, w, seed=classes, noise=2.0),
               "confident": lambda: _confident(classes, h, w, seed=classes)}[kind]()
        np.testing.assert_array_equal(_labels(low, steps), _reference(low, steps))
        np.testing.assert_array_equal(_labels(low, steps, band_elements=500), _reference(low, steps))


def test_ties_and_near_ties_resolve_as_the_arg_max_does(always_shortcut):
    (h, w), steps = CHAINS["x8 crop"]
    low = _smooth(6, h, w, seed=3, scale=2000.0)  # large values: rounding is coarse
    low[:, 4] = low[:, 1]  # exact ties everywhere between classes 1 and 4
    low[:, 5] = low[:, 2] + torch.finfo(torch.float32).eps * low[:, 2].abs()  # one ulp apart
    low[:, :, 10:20, 10:30] = 7.0  # a constant patch: every class tied
    labels = _labels(low, steps)
    np.testing.assert_array_equal(labels, _reference(low, steps))
    assert not (labels == 4).any()  # the lower index wins an exact tie
    (h, w), steps = CHAINS["two steps up"]
    low = _smooth(6, h, w, seed=4, scale=2000.0)
    low[:, 3] = low[:, 0]
    np.testing.assert_array_equal(_labels(low, steps), _reference(low, steps))


def test_a_sure_model_has_few_classes_interpolated(interpolated_values):
    """Where one class is well ahead the label is taken without arithmetic; elsewhere only the classes that can
    win are interpolated: a small part of the reference's classes x pixels values."""
    (h, w), steps = CHAINS["x8"]
    low = _confident(150, h, w, seed=0)
    interpolated = interpolated_values
    labels = _labels(low, steps)
    np.testing.assert_array_equal(labels, _reference(low, steps))
    assert interpolated, "the shortcut was not taken"
    assert sum(interpolated) < 0.02 * 150 * 512 * 512


def test_noise_and_non_finite_logits_fall_back_to_the_reference():
    (h, w), steps = CHAINS["x8"]
    noise = torch.randn(1, 150, h, w, generator=torch.Generator().manual_seed(0))
    assert labelmap._Plan.build(noise, steps) is None  # near-ties everywhere: the shortcut would cost more
    np.testing.assert_array_equal(_labels(noise, steps), _reference(noise, steps))
    broken = noise.clone()
    broken[0, 3, 5, 5] = float("inf")
    assert labelmap._Plan.build(broken, steps) is None
    np.testing.assert_array_equal(_labels(broken, steps), _reference(broken, steps))


def test_label_map_bands_refuses_a_batch():
    with pytest.raises(ValueError, match=r"one image's logits \(1, K, h, w\)"):
        next(label_map_bands(torch.zeros(2, 3, 4, 4), [ResizeStep((4, 4), (8, 8))]))


def _subnormal(classes, h, w, seed):
    """Smooth logits a few units of the smallest float32 subnormal (2**-149) apart: rounding there is absolute."""
    return (_smooth(classes, h, w, seed) * 4).round() * 2.0 ** -149


@pytest.mark.parametrize("seed", range(4))
def test_subnormal_logits_give_the_reference_labels(always_shortcut, seed):
    steps = [ResizeStep((16, 20), (128, 160))]
    low = _subnormal(19, 16, 20, seed)
    assert 0 < float(low.abs().max()) < torch.finfo(torch.float32).tiny
    np.testing.assert_array_equal(_labels(low, steps), _reference(low, steps))


def test_infinite_logits_give_the_reference_labels(always_shortcut):
    steps = [ResizeStep((16, 20), (128, 160))]
    low = _smooth(19, 16, 20, seed=5)
    low[0, 3, 2:5, 4:9] = float("inf")
    low[0, 7, 9:12, 1:3] = float("-inf")
    np.testing.assert_array_equal(_labels(low, steps), _reference(low, steps))


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, derandomize=True)
@given(classes=st.sampled_from([9, 19, 40]), h=st.integers(2, 12), w=st.integers(2, 12),
       scale=st.sampled_from([2.0 ** -149, 2.0 ** -140, 1e-30, 1.0, 1e4, 1e30]), factor=st.integers(2, 8),
       two_steps=st.booleans(), ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_the_shortcut_equals_its_reference_for_any_scale_size_and_chain(classes, h, w, scale, factor, two_steps,
                                                                         ties, seed):
    labelmap_costs = (labelmap._VALUE_COST, labelmap._PIXEL_COST, labelmap._MAX_CHANGING)
    labelmap._VALUE_COST, labelmap._PIXEL_COST, labelmap._MAX_CHANGING = {1: 0.0, 2: 0.0}, 0.0, 1.0
    try:
        low = (_smooth(classes, h, w, seed) * 4).round() * scale  # rounded: many exact ties between classes
        if ties:
            low[0, 1] = low[0, 0]  # two classes equal everywhere
        steps = [ResizeStep((h, w), (h * factor, w * factor))]
        if two_steps:
            steps.append(ResizeStep((h * factor, w * factor), (h * factor + 3, w * factor + 5)))
        np.testing.assert_array_equal(_labels(low, steps), _reference(low, steps))
    finally:
        labelmap._VALUE_COST, labelmap._PIXEL_COST, labelmap._MAX_CHANGING = labelmap_costs
