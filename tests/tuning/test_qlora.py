"""tuning=qlora: LoRA over a base quantised to 4-bit NF4 by bitsandbytes when it is loaded.

Without a CUDA GPU a run stops before any model is loaded. bitsandbytes (>= 0.48) also runs 4-bit layers on
a CPU, so the whole path (quantised load, training, the best checkpoint reloaded for testing, adapter
export, tunelab-predict) is tested here with that check lifted, and again on a GPU under the ``gpu`` marker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from tests.conftest import make_rows, tiny_overrides
from tests.decoder_fixtures import build_tiny_decoder, tiny_llama  # noqa: F401
from tests.helpers import assert_predict_scores_the_test_split, compose_train
from tunelab.errors import ConfigError, TunelabError, unwrapped_errors
from tunelab.exported import load_run_model
from tunelab.models import load_model
from tunelab.tasks import base as task_base
from tunelab.train import run
from tunelab.trusted import OPTIMIZER, locate
from tunelab.tuning import qlora

REQUIRED = os.environ.get("TUNELAB_REQUIRE_GPU") == "1"
# The linear layers of a Llama block: every one is quantised and gets LoRA (target_modules=all-linear).
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def topics_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qlora-data") / "topics.csv"
    make_rows(240, seed=0).to_csv(path, index=False)
    return path


def qlora_overrides(model: Path, data: Path, *extra: str) -> list[str]:
    return tiny_overrides(model, data, "tuning=qlora", "tuning.peft.r=8", "tuning.peft.lora_dropout=0",
                          "optimizer.lr=1e-2", "trainer.max_epochs=3", *extra)


@pytest.fixture(scope="module")
def llama_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama of hidden size 64: bitsandbytes 0.50's CPU inference path (on CPUs with AVX512-BF16) repacks
    4-bit weights in blocks of 64 inputs and fails on narrower layers."""
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama-64"), "llama", hidden_size=64)


@pytest.fixture
def cuda_check_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qlora, "check_quantisation_support", lambda: None)


def test_qlora_without_cuda_stops_before_loading_a_model(tiny_llama: Path, topics_csv: Path, tmp_path: Path,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = []
    monkeypatch.setattr(task_base, "load_model", lambda *args, **kwargs: loaded.append(args))
    cfg = compose_train(tmp_path / "run", *qlora_overrides(tiny_llama, topics_csv))
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    assert str(raised.value) == (
        "tuning=qlora needs a CUDA GPU and bitsandbytes, and here torch sees no CUDA GPU; use tuning=lora (the same "
        "LoRA adapters over full-precision weights) on this machine")
    assert not loaded
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "needs a CUDA GPU" in status["error"]


@pytest.mark.usefixtures("cuda_check_lifted")
def test_qlora_preset_quantises_to_nf4_with_double_quantisation(compose_cfg) -> None:
    cfg = compose_cfg("tuning=qlora", "optimizer=paged-adamw")
    strategy = instantiate(cfg.tuning)
    quantization = strategy.load_kwargs()["quantization_config"]
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype is torch.bfloat16
    assert strategy.peft_config.target_modules == "all-linear"
    assert cfg.optimizer._target_ == "bitsandbytes.optim.PagedAdamW" and cfg.optimizer.lr == cfg.tuning.lr == 2e-4


@pytest.mark.usefixtures("cuda_check_lifted")
def test_qlora_refuses_a_merged_export_and_unknown_quantisation_keys(compose_cfg) -> None:
    with pytest.raises(ConfigError, match="merge_on_export=true is not possible with tuning=qlora"), unwrapped_errors():
        instantiate(compose_cfg("tuning=qlora", "tuning.merge_on_export=true").tuning)
    with pytest.raises(ConfigError, match=r"tuning.quantization.bnb_4bit_quant_typ is not an argument of transformers."
                                          r"BitsAndBytesConfig; did you mean tuning.quantization.bnb_4bit_quant_type\?"), \
            unwrapped_errors():
        instantiate(compose_cfg("tuning=qlora", "+tuning.quantization.bnb_4bit_quant_typ=fp4").tuning)


@pytest.mark.usefixtures("cuda_check_lifted")
def test_qlora_refuses_a_model_loaded_without_quantisation(compose_cfg, tiny_llama: Path) -> None:  # noqa: F811
    """A strategy that wraps qlora but loads the model itself would otherwise train plain LoRA unnoticed."""
    cfg = compose_cfg("tuning=qlora", f"model.name_or_path={tiny_llama}")
    model = load_model(AutoModelForCausalLM, cfg.model)
    with pytest.raises(ConfigError, match="tuning=qlora got LlamaForCausalLM with no 4-bit layer"):
        instantiate(cfg.tuning).apply(model)


@pytest.mark.usefixtures("cuda_check_lifted")
def test_qlora_needs_pretrained_weights(compose_cfg) -> None:
    cfg = compose_cfg("model=tiny", "tuning=qlora")  # from_scratch: nothing to quantise at load
    with pytest.raises(ConfigError, match=r"loads pretrained weights with quantization_config.*model\.from_scratch"):
        load_model(AutoModelForCausalLM, cfg.model, load_kwargs=instantiate(cfg.tuning).load_kwargs())


def check_qlora_run(out: Path, metrics: dict, cfg, tmp_path: Path) -> None:
    """It learnt; the export is the adapter over a 4-bit base with LoRA on every block linear layer, and it
    predicts the test split as the run scored it."""
    import bitsandbytes as bnb

    frame = pd.read_csv(out / "logs" / "metrics.csv")
    # One validation per epoch of fit; after fit the best checkpoint's weights are validated once more, unless the
    # last epoch's were the best (that validation is reused): so the first max_epochs rows, not all but the last.
    losses = frame.dropna(subset=["val/loss"])["val/loss"].tolist()[:cfg.trainer.max_epochs]
    assert losses[-1] < 0.6 * losses[0]
    assert metrics["test"]["accuracy"] > 0.7  # chance is 1/3
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert not (out / "model" / "model.safetensors").exists() and not (out / "model" / "merged").exists()

    model = load_run_model(out)
    quantised = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert {n.rsplit(".", 2)[-2] for n in quantised} == BLOCK_LINEARS and len(quantised) == 2 * len(BLOCK_LINEARS)
    assert all(n.endswith(".base_layer") for n in quantised)  # each wrapped by LoRA
    assert not isinstance(model.base_model.model.score.original_module, bnb.nn.Linear4bit)  # the head: full precision
    assert_predict_scores_the_test_split(out, cfg, metrics, tmp_path)


@pytest.mark.usefixtures("cuda_check_lifted")
def test_qlora_trains_exports_and_reloads_on_cpu(llama_64: Path, topics_csv: Path, tmp_path: Path) -> None:
    """The path a GPU runs, on bitsandbytes' CPU kernels (only the CUDA check differs)."""
    out = tmp_path / "run"
    cfg = compose_train(out, *qlora_overrides(llama_64, topics_csv, "trainer.max_epochs=5"))
    metrics = run(cfg)
    check_qlora_run(out, metrics, cfg, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs a CUDA GPU")
def test_qlora_on_gpu_with_paged_adamw_and_checkpointing(tiny_llama: Path, topics_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    cfg = compose_train(out, *qlora_overrides(tiny_llama, topics_csv, "optimizer=paged-adamw",
                                              "model.gradient_checkpointing=true"))
    metrics = run(cfg)
    assert metrics["device"].startswith("cuda")
    check_qlora_run(out, metrics, cfg, tmp_path)


def test_only_bitsandbytes_optimizers_are_trusted_in_a_run_folder(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    file = tmp_path / "config.yaml"
    assert locate("bitsandbytes.optim.PagedAdamW8bit", OPTIMIZER, file, "optimizer._target_") is bnb.optim.PagedAdamW8bit
    with pytest.raises(TunelabError, match="is not allowed: a run folder is data, never code"):
        locate("bitsandbytes.functional.quantize_4bit", OPTIMIZER, file, "optimizer._target_")
