"""Segmentor input checks: non-finite values and floating dtypes other than the model's."""
import pytest
import torch


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_a_value_error_naming_count_and_first_index(tiny, value):
    x = torch.zeros(2, 3, 64, 64)
    x[1, 2, 10, 20] = value
    x[1, 2, 40, 3] = value
    with pytest.raises(ValueError, match=r"2 non-finite.*\(1, 2, 10, 20\)"):
        tiny(x)
    with pytest.raises(ValueError, match=r"non-finite"):
        tiny.forward_with_attention(x)


def test_finite_input_passes_and_tracing_skips_the_data_check(tiny):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(x)
        traced = torch.jit.trace(tiny, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_parameter_dtype(tiny, dtype):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(x)
        got = tiny(x.to(dtype))
    assert got.dtype == torch.float32 and got.shape == expected.shape
    tol = 1e-5 if dtype == torch.float64 else 0.1
    assert float((got - expected).abs().max()) < tol * max(1.0, float(expected.abs().max()))


def test_a_lower_precision_model_refuses_float32_input_with_the_expected_dtype(tiny):
    import copy

    half = copy.deepcopy(tiny).to(torch.bfloat16)
    with pytest.raises(ValueError, match="torch.bfloat16"):
        half(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        out = half(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_under_autocast_the_input_dtype_is_left_to_autocast(tiny):
    x = torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(x)
    assert out.shape == (1, 3, 64, 64)
