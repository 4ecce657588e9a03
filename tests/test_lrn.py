import pytest
import torch
from torch import nn

from model.lrn import LocalResponseNorm


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"), [(5, 1e-4, 0.75, 2.0), (4, 1e-3, 0.75, 1.0), (3, 2e-4, 0.5, 1.0)]
)
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_matches_torch_lrn_in_fp32(size: int, alpha: float, beta: float, k: float, scale: float) -> None:
    torch.manual_seed(size)
    x = torch.randn(4, 96, 13, 13) * scale
    expected = nn.LocalResponseNorm(size, alpha, beta, k)(x)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        assert (LocalResponseNorm(size, alpha, beta, k)(layout) - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize(("size", "alpha", "beta", "k"), [(5, 1e-4, 0.75, 2.0), (4, 1e-3, 0.75, 1.0)])
def test_without_gradients_the_shifted_sum_computes_the_same(size: int, alpha: float, beta: float, k: float) -> None:
    torch.manual_seed(size)
    x = torch.randn(4, 96, 13, 13) * 30
    expected = nn.LocalResponseNorm(size, alpha, beta, k)(x)
    with torch.no_grad():
        for layout in (x, x.contiguous(memory_format=torch.channels_last)):
            assert (LocalResponseNorm(size, alpha, beta, k)(layout) - expected).abs().max().item() <= 1e-6
        compiled = torch.compile(LocalResponseNorm(size, alpha, beta, k))
        assert (compiled(x.contiguous(memory_format=torch.channels_last)) - expected).abs().max().item() <= 1e-6


def test_normalises_something() -> None:
    x = torch.randn(2, 16, 5, 5) * 100
    assert not torch.allclose(LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    x = torch.randn(2, 32, 7, 7) * 10
    expected = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    out = LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_gradient_matches() -> None:
    x = torch.randn(2, 24, 6, 6, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0)(x).square().sum().backward()
    LocalResponseNorm(5, 1e-2, 0.75, 2.0)(y).square().sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-5)


def test_under_torch_compile() -> None:
    x = torch.randn(2, 96, 13, 13) * 5
    compiled = torch.compile(LocalResponseNorm(5, 1e-4, 0.75, 2.0))
    assert torch.allclose(compiled(x), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x), atol=1e-6)
