"""seq2seq.kernels: each fast path is chosen by running it, and every branch of that choice
(the op works / raises / is missing / answers wrongly, or the switch is off) computes what stock
PyTorch computes."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from seq2seq import kernels
from seq2seq.config import ModelConfig
from seq2seq.errors import UserError
from seq2seq.kernels import probe
from seq2seq.kernels.probe import Decision
from seq2seq.models.builder import build_model


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    """Each test probes anew and leaves the process as it found it."""
    monkeypatch.delenv(probe.ENV_VAR, raising=False)
    probe.reset()
    yield
    kernels.configure("auto")
    probe.reset()


def _raises(*args, **kwargs):
    raise RuntimeError("this op needs a CPU feature this machine lacks")


def _wrong(x, weight, bias, *args):
    return torch.zeros(*x.shape[:-1], weight.size(0))


# How a broken op is planted: find_op is where the probe looks up torch.ops.
BRANCHES = {
    "missing": lambda namespace, name: None,
    "raises": lambda namespace, name: _raises,
    "wrong answer": lambda namespace, name: _wrong,
}


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_broken_onednn_op_is_turned_down_with_its_reason(monkeypatch, branch):
    monkeypatch.setattr(probe, "find_op", BRANCHES[branch])
    decision = probe.decision("onednn_linear")
    assert not decision and decision.value is None
    assert {"missing": "missing", "raises": "raises RuntimeError", "wrong answer": "disagrees"}[branch] in decision.reason
    # What depends on it goes too, and says why.
    for name in ("onednn_packed_fp32", "onednn_packed_bf16", "deferred_lstm"):
        assert not probe.decision(name) and "onednn_linear" in probe.decision(name).reason
    assert not kernels.uses_onednn(torch.randn(2, 4), torch.randn(3, 4))


def model_outputs(arch: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A small model's training loss (dropout on, fixed seed) and its gradients."""
    cfg = ModelConfig(arch=arch, embed_dim=16, hidden_dim=16, encoder_layers=2, decoder_layers=2, heads=2,
                      ffn_dim=32, dropout=0.0, attention="additive" if arch == "lstm" else "scaled_dot")
    torch.manual_seed(0)
    model = build_model(cfg, 30, 30)
    src = torch.randint(4, 30, (3, 7))
    src[0, 5:] = 1  # padding
    tgt = torch.randint(4, 30, (3, 6))
    logits = model(src, tgt)
    loss = logits.log_softmax(-1).mean()
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
                           if g is not None]


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
@pytest.mark.parametrize("branch", ["works", *BRANCHES])
def test_models_compute_the_same_on_every_branch(monkeypatch, arch, branch):
    kernels.configure("off")
    stock_loss, stock_grads = model_outputs(arch)
    kernels.configure("auto")
    if branch == "works":
        if not probe.decision("onednn_linear"):
            pytest.skip(f"onednn_linear: {probe.decision('onednn_linear').reason}")
    else:
        monkeypatch.setattr(probe, "find_op", BRANCHES[branch])
        assert not probe.decision("onednn_linear")
    loss, grads = model_outputs(arch)
    torch.testing.assert_close(loss, stock_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(stock_grads)
    for got, want in zip(grads, stock_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_with_packed_weights_on_a_cpu_that_refuses_them(monkeypatch, dtype):
    """Packed bf16 weights raise on CPUs without AVX-512 (the Zen 3 failure): decoding then
    multiplies with the weights as they are, and gets the same products."""
    real = probe.find_op
    monkeypatch.setattr(probe, "find_op", lambda ns, name: _raises if name == "_reorder_linear_weight" else real(ns, name))
    model = torch.nn.Sequential(kernels.Linear(8, 12), torch.nn.ReLU(), kernels.Linear(12, 5)).to(dtype)
    x = torch.randn(4, 8, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
        with kernels.packed_weights(model, rows=4):
            got = model(x)
            assert model[0].packed is None
    assert torch.equal(got, expected)
    assert "raises RuntimeError" in probe.decision("onednn_packed_bf16").reason


def test_off_turns_every_path_off_and_the_environment_wins(monkeypatch):
    kernels.configure("off")
    assert not any(kernels.decisions().values())
    kernels.configure("auto")
    monkeypatch.setenv(probe.ENV_VAR, "off")
    assert kernels.mode() == "off" and not any(kernels.decisions().values())
    monkeypatch.delenv(probe.ENV_VAR)
    assert kernels.mode() == "auto"
    assert probe.decision("fast_dropout")  # stock ops only: works wherever torch does
    with pytest.raises(ValueError):
        kernels.configure("fast")


def test_off_means_stock_dropout_and_tanh():
    kernels.configure("off")
    x = torch.randn(1000)
    torch.manual_seed(3)
    got = kernels.dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(got, torch.nn.functional.dropout(x, 0.3))
    y = torch.randn(50)
    assert torch.equal(kernels.tanh_(y.clone()), torch.tanh(y))


def test_probing_draws_no_random_numbers_from_the_run():
    """A resumed run probes at its first step, the uninterrupted one did not: the probe must
    not move the generator, or the two would draw different dropout noise."""
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    probe.reset()
    kernels.decisions()
    assert torch.equal(torch.rand(5), expected)


def test_tuning_the_process_is_skipped_when_off(monkeypatch):
    for name in kernels.process.CACHE_CAPS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(probe.ENV_VAR, "off")
    assert kernels.tune_process() == {"cache_caps": False, "keep_freed_memory": False}
    assert not any(name in __import__("os").environ for name in kernels.process.CACHE_CAPS)


def no_bf16(monkeypatch):
    monkeypatch.setattr(kernels.precision, "bf16_runs", lambda: Decision(None, "raises RuntimeError: no bf16 here"))


def test_bf16_that_cannot_run_is_refused_by_name(monkeypatch):
    no_bf16(monkeypatch)
    with pytest.raises(UserError, match=r"^decode.precision: bf16 does not run on this CPU .*; use fp32$"):
        kernels.check_bf16(torch.device("cpu"), "decode.precision")
    # A GPU is not probed: from compute capability 8.0 on it multiplies bf16 natively.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert kernels.check_bf16(torch.device("cuda"), "decode.precision") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert "this GPU (compute capability below 8.0) emulates bf16" in kernels.check_bf16(torch.device("cuda"), "k")


def test_training_in_bf16_that_cannot_run_writes_nothing(monkeypatch, tiny_corpus, tmp_path):
    from seq2seq.training.run import train

    no_bf16(monkeypatch)
    out = tmp_path / "run"
    for key in ("train.precision", "decode.precision"):
        with pytest.raises(UserError, match=f"^{key}: bf16 does not run"):
            train(tiny_corpus.config(out, f"{key}=bf16"), log=lambda m: None, quiet=True)
        assert not out.exists()


def test_translate_in_bf16_that_cannot_run_is_one_line_and_exit_2(monkeypatch, tmp_path):
    from cli.main import app
    from tests.helpers_cli import tiny_run

    checkpoint = tiny_run(tmp_path)
    no_bf16(monkeypatch)
    source = tmp_path / "in.es"
    source.write_text("Y dijo Dios.\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["translate", "-c", str(checkpoint), "--precision", "bf16", "-i", str(source)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --precision: bf16 does not run on this CPU (raises RuntimeError: no bf16 here); use fp32"]


def test_attn_kernels_lists_every_decision():
    from cli.main import app

    result = CliRunner().invoke(app, ["kernels", "--cpu-kernels", "off"])
    assert result.exit_code == 0, result.output
    assert "mode off" in result.output
    for name in probe.PROBES:
        assert f"{name} " in result.output
    assert result.output.count("off (cpu kernels: off)") == len(probe.PROBES)


@pytest.mark.parametrize("honoured", [True, False])
def test_a_non_finite_update_is_skipped_whether_or_not_found_inf_is_honoured(monkeypatch, honoured):
    from seq2seq.kernels import optim

    if honoured and not optim.found_inf_skips("cpu"):
        pytest.skip("fused Adam on this torch ignores found_inf")
    monkeypatch.setattr(optim, "found_inf_skips", lambda device_type: honoured)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
    for bad, changes in ((True, False), (False, True)):
        param.grad = torch.ones(3)
        before = param.detach().clone()
        optim.step_unless(optimizer, torch.tensor(bad))
        assert (not torch.equal(param, before)) == changes


def test_the_probe_decides_the_same_whatever_mode_its_first_caller_is_in():
    """The decision is kept for the process: a first caller without gradients or under autocast
    must not turn a path down for everyone."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = {name: bool(decision) for name, decision in kernels.decisions().items()}
    probe.reset()
    assert inside == {name: bool(decision) for name, decision in kernels.decisions().items()}


def test_an_lstm_trains_under_bf16_autocast_on_every_cpu(monkeypatch):
    """oneDNN's bf16 LSTM kernel needs AVX-512; where it is missing (or forced missing here) the
    RNN calls run in float32 and the rest of the model in bf16: no traceback."""
    from seq2seq.models import rnn_layers

    for runs in (True, False):
        if runs and not rnn_layers.bf16_rnn_runs():
            continue  # this CPU has no bf16 RNN kernel: only the fallback can run here
        monkeypatch.setattr(rnn_layers, "bf16_rnn_runs", lambda: runs)
        cfg = ModelConfig(arch="lstm", embed_dim=8, hidden_dim=8, encoder_layers=2, decoder_layers=2,
                          attention="general", decoder_style="luong", input_feeding=True)
        model = build_model(cfg, 20, 20)
        src, tgt = torch.randint(4, 20, (3, 6)), torch.randint(4, 20, (3, 5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, tgt)
        logits.float().log_softmax(-1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
