"""LoRA fine-tuning on a tiny random Llama built in the test, and the LM plugin's `adapter` option."""

from __future__ import annotations

from pathlib import Path

import pytest

from generators.training.lora import ADAPTER_DIR, CHECKPOINT, LoraOptions, chat_examples, fine_tune, split

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 3


def test_a_few_lora_steps_lower_the_held_out_perplexity(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text(TEXT, encoding="utf-8")
    events: list[dict] = []
    figures = fine_tune(tiny_model_dir, data, "text", tmp_path / "run",
                        LoraOptions(rank=8, alpha=16, lr=1e-2, epochs=3, max_length=32, batch_size=4, max_steps=12),
                        events.append)
    assert figures["steps"] == 12
    assert figures["ppl_after"] < 0.8 * figures["ppl_before"], figures
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13)) and steps[-1]["total"] == 12
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (tmp_path / "run" / ADAPTER_DIR / "adapter_config.json").is_file()
    assert (tmp_path / "run" / CHECKPOINT).is_file()


def test_resume_continues_from_the_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text(TEXT, encoding="utf-8")
    options = LoraOptions(rank=4, alpha=8, lr=1e-2, epochs=1, max_length=32, batch_size=4, max_steps=6,
                          checkpoint_every=3)
    fine_tune(tiny_model_dir, data, "text", tmp_path / "run", options)
    events: list[dict] = []
    more = LoraOptions(**{**options.__dict__, "epochs": 2, "max_steps": 9})
    figures = fine_tune(tiny_model_dir, data, "text", tmp_path / "run", more, events.append, resume=True)
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == [7, 8, 9] and figures["steps"] == 9
    assert any("resumed from step 6" in e.get("message", "") for e in events)


def test_chats_learn_only_the_assistant_tokens(smol_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    chats = [[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there, friend!"}]] * 2
    examples = chat_examples(tok, chats, 256)
    learned = tok.decode([t for t, label in zip(examples[0].input_ids, examples[0].labels, strict=False) if label != -100])
    assert "Hi there, friend!" in learned and "Say hi" not in learned
    train, held = split(examples, 0.1)
    assert len(train) == 1 and len(held) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split(examples[:1], 0.1)


def test_adapter_on_the_plugin_gives_the_peft_models_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from generators.text.transformers_lm import TransformersLM

    data = tmp_path / "data.txt"
    data.write_text(TEXT, encoding="utf-8")
    fine_tune(tiny_model_dir, data, "text", tmp_path / "run",
              LoraOptions(rank=8, alpha=16, lr=2e-2, epochs=1, max_length=32, batch_size=4, max_steps=5))
    adapter = tmp_path / "run" / ADAPTER_DIR
    ids = torch.tensor([[1, 200, 300, 400, 500, 600]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
    gen = TransformersLM("tuned", {"source": str(tiny_model_dir), "adapter": str(adapter), "quantization": "none",
                                   "dtype": "float32", "max_batch": 1, "native_step": False, "pack_weights": False})
    gen.load()
    try:
        with torch.no_grad():
            merged_logits = gen.model(ids).logits
    finally:
        gen.unload()
    assert not torch.allclose(base_logits, peft_logits, atol=1e-3)  # the adapter changed the model
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)


def test_a_folder_that_is_no_adapter_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from generators.base import LoadFailedError
    from generators.text.transformers_lm import TransformersLM

    gen = TransformersLM("tuned", {"source": str(tiny_model_dir), "adapter": str(tmp_path), "quantization": "none",
                                   "max_batch": 1, "native_step": False})
    with pytest.raises(LoadFailedError, match="not a PEFT adapter"):
        gen.load()
