"""verirl.pretrained: the one model loader of training and evaluation (directory, hub id, or a
PEFT adapter merged into its base), with errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verirl.errors import ConfigError
from verirl.pretrained import load_pretrained, model_source


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero B (so merging changes the weights), saved
    without a tokenizer: the base's must be used."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(out)
    return out


def test_an_adapter_directory_loads_merged_the_same_for_training_and_evaluation(
    adapter_dir: Path, tiny_model_dir: Path
) -> None:
    from peft import AutoPeftModelForCausalLM
    from verirl.evals.models import load_model

    from verirl.train.config import ModelSection
    from verirl.train.model import load_policy

    ids = torch.tensor([[5, 6, 7, 8]])
    want = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))(ids).logits
    trained, tok = load_policy(ModelSection(path=str(adapter_dir)), "cpu")
    evaluated, _ = load_model(adapter_dir)
    for model in (trained, evaluated):
        assert not hasattr(model, "peft_config")  # a plain model: merged, no adapter layers
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-4)
    base, _ = load_pretrained(tiny_model_dir)
    assert not torch.allclose(base(ids).logits, want)  # the adapter did change the model
    assert tok.pad_token_id is not None and tok.name_or_path == str(tiny_model_dir)


def test_dtype_auto_keeps_the_checkpoints_and_a_named_one_casts(tiny_model_dir: Path) -> None:
    auto, _ = load_pretrained(tiny_model_dir)
    bf16, _ = load_pretrained(tiny_model_dir, "bfloat16")
    assert next(auto.parameters()).dtype == torch.float32
    assert next(bf16.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype 'float16' is not one of"):
        load_pretrained(tiny_model_dir, "float16")


def test_bad_paths_are_config_errors_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(
        ConfigError, match=r"model\.path: '.*weights\.bin' could not be loaded: not"
    ):
        model_source(tmp_path / "weights.bin", "model.path")
    with pytest.raises(ConfigError, match=r"^model: '.*missing' could not be loaded"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"^model: '.*empty' could not be loaded: "):
        (tmp_path / "empty").mkdir()
        load_pretrained(tmp_path / "empty")
    assert model_source("~") == str(Path("~").expanduser())  # a local directory, expanded
