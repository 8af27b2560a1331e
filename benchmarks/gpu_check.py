"""One command for a CUDA machine: the figures the README's GPU table needs, on models built from
configs (random weights, nothing downloaded), printed as one table.

    .venv/bin/python benchmarks/gpu_check.py [--steps 20] [--batch 8] [--new-tokens 64]

1. Stable Diffusion 1.5-sized text-to-image in float16 at 512×512 through the studio's diffusers
   plugin (a pipeline folder saved from SD 1.5's UNet / VAE / CLIP text configs): iterations/s and
   peak GPU memory, with and without model CPU offload.
2. A SmolLM2-135M-shaped causal LM loaded in bitsandbytes 4-bit (NF4, bfloat16 compute): load time,
   weight memory, and a batched greedy decode (tokens/s over the batch, peak memory).

Without CUDA it says so and exits 0: nothing is measured on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 2**30


def save_sd15_shaped_pipeline(folder: Path) -> Path:
    """SD 1.5's component configs with random weights (the tokenizer is the tests' small one)."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.image.tiny_diffusers import save_tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_tokenizer(folder.parent / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=max(len(tokenizer), 1000), hidden_size=768,
                                                intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def text_to_image(folder: Path, steps: int, offload: str) -> tuple[float, float]:
    """(iterations/s, peak GiB) of one 512×512 float16 image through the plugin."""
    import torch

    from generators.base import PaintRequest, StepControl
    from generators.image.diffusers_plugin import DiffusersParams, DiffusersPlugin

    gen = DiffusersPlugin("sd15-shaped", {"source": str(folder), "device": "cuda", "dtype": "float16",
                                          "offload": offload})
    gen.load()
    request = PaintRequest(DiffusersParams(prompt="a red cat", steps=steps, width=512, height=512), seed=1)
    gen.paint(PaintRequest(DiffusersParams(prompt="warm-up", steps=2, width=512, height=512), seed=1))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times: list[float] = []

    def on_step(_event: object) -> None:
        torch.cuda.synchronize()
        times.append(time.perf_counter())

    start = time.perf_counter()
    gen.paint(request, StepControl(on_step, preview_every=0))
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GIB
    gen.unload()
    return rate, peak


def lm_4bit(batch: int, new_tokens: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, device_map="cuda")
        load_s = time.perf_counter() - start
    weights = model.get_memory_footprint() / GIB
    prompt = torch.randint(0, config.vocab_size, (batch, 32), device="cuda")
    model.generate(prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"load_s": load_s, "weights_gib": weights, "tokens_per_s": batch * new_tokens / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / GIB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False) — nothing measured. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_sd15_shaped_pipeline(Path(tmp) / "sd15-shaped")
        print(f"{'SD 1.5-shaped text-to-image 512x512 float16':48} {'it/s':>8} {'peak GiB':>9}")
        for offload in ("none", "model"):
            rate, peak = text_to_image(folder, args.steps, offload)
            print(f"{'  offload ' + offload:48} {rate:8.2f} {peak:9.2f}")
    lm = lm_4bit(args.batch, args.new_tokens)
    print(f"SmolLM2-135M-shaped LM, bitsandbytes 4-bit NF4: load {lm['load_s']:.1f} s, weights {lm['weights_gib']:.3f} GiB")
    print(f"  batched greedy decode, batch {args.batch} x {args.new_tokens} tokens: {lm['tokens_per_s']:.0f} tokens/s, "
          f"peak {lm['peak_gib']:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
