"""Every tuning method on a decoder LLM (tiny Llama, prompt -> completion): it trains, and what it
leaves frozen stays bit-identical; BitFit (no biases) and head-only (no separate head) are refused with
the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.decoder_fixtures import tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import SEQ2SEQ_FAST, pairs_csv  # noqa: F401
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.exported import load_run_model
from tunelab.train import run

pytestmark = pytest.mark.usefixtures("one_thread")
# Every preset of configs/tuning but distill and qlora (their own tests) and those a decoder refuses (below).
REFUSED = {"bitfit", "head-only"}
METHODS = sorted(p.stem for p in (CONFIG_DIR / "tuning").glob("*.yaml") if p.stem not in {"distill", "qlora", *REFUSED})


def short_run(model: Path, data: Path, out: Path, tuning: str) -> dict:
    return run(compose_train(out, "task=parallel", f"task.data.source.data_files.train={data}", "model=smollm2-135m",
                             f"model.name_or_path={model}", f"tuning={tuning}", *SEQ2SEQ_FAST[:-2],
                             "trainer.max_steps=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                             "task.data.max_length=48", *(["tuning.n_blocks=1"] if tuning == "freeze" else [])))


def block0_query(model: torch.nn.Module) -> torch.Tensor:
    """The first block's query projection (a peft model's base layer)."""
    return next(v for k, v in model.state_dict().items()
                if k.endswith(("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.base_layer.weight")))


@pytest.mark.parametrize("tuning", METHODS)
def test_every_method_trains_a_decoder_and_reloads(tuning: str, tiny_llama: Path, pairs_csv: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    metrics = short_run(tiny_llama, pairs_csv, tmp_path / "run", tuning)
    assert metrics["train"]["steps"] == 4
    assert (metrics["params"]["trainable_pct"] == 100) == (tuning == "full")
    original = load_file(tiny_llama / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    tuned = block0_query(load_run_model(tmp_path / "run"))
    # the export holds what was trained; a frozen base weight is the pretrained one, bit for bit
    assert torch.equal(tuned, original) == (tuning != "full")


@pytest.mark.parametrize("tuning,reason", [
    ("bitfit", r"tuning=bitfit trains the bias terms, and LlamaForCausalLM \(llama\) has none"),
    ("head-only", r"tuning.head_only: LlamaForCausalLM has no separate task head to train"),  # its LM head is tied
])
def test_methods_without_their_parameters_on_a_decoder_say_why(tuning: str, reason: str, tiny_llama: Path,  # noqa: F811
                                                               pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=reason):
        short_run(tiny_llama, pairs_csv, tmp_path / "run", tuning)
