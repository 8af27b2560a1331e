"""Tiny random-weight Stable Diffusion pipelines, built from configs and saved like a user's folder.

Nothing is downloaded: the CLIP tokenizer is made from a vocabulary and merges written here (every
byte-level character, alone and as a word end, plus a few merges), the UNet, VAE and text encoder
are a few thousand random weights. The configs follow diffusers' own fast tests (two blocks of 4/8
channels, cross-attention width 32). Also: a LoRA file for that UNet, made with peft.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["a", "cat", "dog", "red", "blue", "photo", "of", "the", "on", "grass", "painting", "blurry"]


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_tiny_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt of a CLIP BPE tokenizer over a few words (characters cover the rest)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in WORDS:  # merge left to right: c a t</w> -> ca t</w> -> cat</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32):  # noqa: ANN201 - a StableDiffusionPipeline
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, sample_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = save_tiny_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=cross_attention_dim, intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=77))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_tiny_pipeline(folder: Path, seed: int = 0, cross_attention_dim: int = 32) -> Path:
    """A diffusers-layout folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    build_tiny_pipeline(seed, cross_attention_dim).save_pretrained(folder)
    return folder


def save_tiny_lora(pipeline_folder: Path | None, out_file: Path, rank: int = 2, seed: int = 1, scale: float = 0.5,
                   cross_attention_dim: int = 32) -> Path:
    """A LoRA (.safetensors, diffusers' format) for the tiny pipeline's UNet attention, non-zero B so it matters.

    Without a pipeline folder it is made for a freshly built tiny UNet of `cross_attention_dim` (a LoRA
    of another model, when that differs from the pipeline's)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if pipeline_folder is not None:
        unet = UNet2DConditionModel.from_pretrained(pipeline_folder / "unet")
    else:
        unet = build_tiny_pipeline(seed, cross_attention_dim).unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out_file.parent, unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name=out_file.name, safe_serialization=True)
    return out_file
