"""seq2seq.kernels.onednn: float32 linear layers on oneDNN must compute what F.linear computes."""

import ctypes

import pytest
import torch
import torch.nn.functional as F

from seq2seq.kernels import Linear, linear, matmul_nt, matmul_tn, packed_weights, probe, uses_onednn


def needs(path: str) -> pytest.MarkDecorator:
    """Skip unless the probe uses fast path ``path`` here, with the probe's reason."""
    decision = probe.decision(path)
    return pytest.mark.skipif(not decision, reason=f"{path}: {decision.reason}")


needs_onednn = needs("onednn_linear")


def gradients(fn, x, weight, bias, grad_out):
    out = fn(x, weight, bias)
    return out, torch.autograd.grad(out, [t for t in (x, weight, bias) if t is not None], grad_out)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (1, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_f_linear_forward_and_backward(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    weight = torch.randn(24, 16, generator=generator, requires_grad=True)
    bias = torch.randn(24, generator=generator, requires_grad=True) if with_bias else None
    grad_out = torch.randn(*shape[:-1], 24, generator=generator)
    assert uses_onednn(x, weight)
    out, grads = gradients(linear, x, weight, bias, grad_out)
    expected, expected_grads = gradients(F.linear, x, weight, bias, grad_out)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_gradient_of_a_sum_and_in_place_use_of_the_output():
    """.sum() sends a stride-0 gradient; ReLU-dropout modifies a linear's output in place."""
    layer = Linear(8, 6)
    x = torch.randn(4, 3, 8, requires_grad=True)
    out = layer(x)
    out.clamp_(min=0).sum().backward()
    reference = Linear(8, 6)
    reference.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, reference.weight, reference.bias).clamp(min=0).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


@needs_onednn  # without oneDNN the helpers are the torch expressions they are compared with
@pytest.mark.parametrize("rows,cols", [(5, 9), (9, 5)])
def test_matmul_helpers_match_torch(rows, cols):
    a, b = torch.randn(11, rows), torch.randn(11, cols)
    torch.testing.assert_close(matmul_tn(a, b), a.t() @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matmul_nt(a.t(), b.t()), a.t() @ b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_and_bf16_weights_keep_torchs_path():
    x, weight = torch.randn(3, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, weight)
        assert linear(x, weight).dtype == torch.bfloat16
    assert not uses_onednn(x.bfloat16(), weight.bfloat16())
    assert linear(x.bfloat16(), weight.bfloat16()).dtype == torch.bfloat16


def test_switching_it_off_gives_f_linear(monkeypatch):
    monkeypatch.setenv(probe.ENV_VAR, "off")
    x, weight = torch.randn(3, 8), torch.randn(4, 8)
    assert not uses_onednn(x, weight)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=needs("onednn_packed_fp32")),
                                   pytest.param(torch.bfloat16, marks=needs("onednn_packed_bf16"))])
def test_packed_weights_give_the_same_products_and_are_freed_on_leaving(with_bias, dtype):
    model = torch.nn.Sequential(Linear(24, 40, bias=with_bias), torch.nn.ReLU(), Linear(40, 8, bias=with_bias))
    model.to(dtype)
    inputs = [torch.randn(rows, 24, dtype=dtype) for rows in (1, 7, 64)] + [torch.randn(5, 3, 24, dtype=dtype)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        with packed_weights(model, rows=64):
            got = [model(x) for x in inputs]
            assert all(layer.packed is not None for layer in (model[0], model[2]))
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == dtype
        torch.testing.assert_close(g, e, **({"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}))
    assert model[0].packed is None and model[0].packed_rows is None


@needs("onednn_packed_fp32")
def test_packed_weights_are_not_used_where_gradients_are_needed():
    layer = Linear(6, 4)
    with packed_weights(layer, rows=8):
        layer(torch.randn(3, 6)).sum().backward()
        assert layer.packed is None
    assert layer.weight.grad is not None


def malloc_bytes_in_use() -> int | None:
    """glibc's count of heap bytes allocated and not yet freed; None where that is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        info = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    info.restype = type("Mallinfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in fields]})
    return info().uordblks


@needs_onednn
def test_memory_does_not_grow_with_the_number_of_shapes_seen():
    """Each batch has its own row count; oneDNN's and ideep's per-shape caches must stay bounded
    (left at their defaults they kept ~0.5 MB per shape: 300 shapes held 168 MB)."""
    if malloc_bytes_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    weight = torch.randn(64, 32)
    for rows in range(1, 40):  # fill the caches to their bound first
        linear(torch.randn(rows, 32), weight)
    before = malloc_bytes_in_use()
    for rows in range(100, 400):
        linear(torch.randn(rows, 32), weight)
    assert malloc_bytes_in_use() - before < 20 * 2**20
