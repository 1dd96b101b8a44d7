"""Any example config with --set model.arch=... gives a valid model (a sweep can vary arch alone)."""

from pathlib import Path

import pytest
import torch

from seq2seq.config import ARCHS, load_config
from seq2seq.config.schema import TRANSFORMER_ATTENTIONS
from seq2seq.errors import UserError
from seq2seq.models.builder import build_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep"))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.stem)
def test_switching_arch_builds_and_runs(config: Path, arch: str):
    overrides = [f"model.arch={arch}", "model.hidden_dim=32", "model.embed_dim=32", "model.ffn_dim=64", "model.heads=4"]
    if arch == "transformer" and load_config(config).model.attention == "none":
        # The one combination that cannot exist: a Transformer decoder needs cross-attention.
        with pytest.raises(UserError, match="model.attention: 'none' is not supported with model.arch transformer"):
            load_config(config, overrides)
        return
    cfg = load_config(config, overrides)
    model = build_model(cfg.model, 40, 40).eval()
    src = torch.randint(4, 40, (2, 7))
    tgt = torch.randint(4, 40, (2, 5))
    logits = model(src, tgt)
    assert logits.shape == (2, 5, 40)
    assert torch.isfinite(logits).all()
    if arch == "transformer":
        assert cfg.model.attention in TRANSFORMER_ATTENTIONS
        assert any("ignored" in note for note in cfg.notes)


def test_set_merges_a_mapping_into_its_section_and_reads_1e_minus_3_as_a_number():
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    base = load_config(demo)
    cfg = load_config(demo, ["model={hidden_dim: 64}", "train.lr=1e-3"])
    assert cfg.model.hidden_dim == 64
    assert (cfg.model.attention, cfg.model.dropout) == (base.model.attention, base.model.dropout)  # kept
    assert cfg.train.lr == 1e-3  # YAML 1.1 reads 1e-3 (no dot) as a string
