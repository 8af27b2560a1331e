"""The diffusers plugin (entry point ``diffusers``): Stable Diffusion-class pipelines a user owns.

`source` is a local pipeline folder (diffusers layout: ``model_index.json``, ``unet/``, ``vae/`` …),
a single ``.safetensors`` checkpoint of the SD 1.x or SDXL family (read through
``from_single_file``; its configs and tokenizer come from `config`, a local pipeline folder of the
same family, or from the hub cache), or a hub id — fetched only with ``allow_download: true``.

One loaded text-to-image pipeline serves all three modes: img2img and inpainting pipelines are made
from the same components (``AutoPipelineFor*.from_pipe``, no second copy of the weights). Image *i*
of a request is drawn from seed + *i* on a CPU generator, so a seed gives the same picture on any
device and alone or in a batch. Each step goes through the request's `StepControl` (progress, a
cheap latent preview, cancel between two steps). LoRA files come from `lora_dir` and are applied
with peft through diffusers' LoRA loader; a request without LoRAs runs on the unmodified weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import (
    CAP_CANCEL,
    CAP_IMAGE_TO_IMAGE,
    CAP_INPAINT,
    CAP_LORA,
    CAP_SEED,
    CAP_STEPS,
    CAP_TEXT_TO_IMAGE,
    GeneratorInfo,
    ImageGenerator,
    ImageOutput,
    InvalidOptionsError,
    LoadFailedError,
    PaintRequest,
    ProgressFn,
    PromptParams,
    StepControl,
    StrictModel,
)
from . import sd_parts

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


class DiffusersLoadOptions(StrictModel):
    source: str = Field(..., description="pipeline folder, SD 1.x / SDXL .safetensors file, or hub id")
    config: str | None = Field(None, description="single file only: a local pipeline folder (or hub id) of the same "
                                                 "family for its configs and tokenizer")
    allow_download: bool = Field(False, description="let a hub id be downloaded (off: local files only)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU")
    offload: Literal["auto", "none", "model", "sequential"] = Field(
        "auto", description="CPU offload on CUDA: auto = model offload when the GPU is too small for the pipeline")
    vae_tiling: Literal["auto", "on", "off"] = Field("auto", description="auto: tile the VAE above 1024×1024")
    lora_dir: str | None = Field(None, description="folder of LoRA .safetensors files; default: SOURCE/loras")
    distilled: bool | None = Field(None, description="an LCM / Turbo model (offers LCM, few steps, low guidance); "
                                                     "empty = detect")


class DiffusersParams(PromptParams):
    scheduler: str = Field("DPM++ 2M", min_length=1, max_length=40, description="sampler (A1111 name)")


def _sha256_16(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _adapter_name(name: str) -> str:
    return "lora_" + re.sub(r"\W", "_", name)


class DiffusersPlugin(ImageGenerator):
    info = GeneratorInfo(
        plugin="diffusers",
        modality="image",
        family="diffusion",
        description="Stable Diffusion-class pipelines through Hugging Face diffusers: text-to-image, img2img, "
                    "inpainting, LoRA",
        capabilities=frozenset({CAP_TEXT_TO_IMAGE, CAP_IMAGE_TO_IMAGE, CAP_INPAINT, CAP_LORA, CAP_STEPS, CAP_SEED,
                                CAP_CANCEL}),
        params=DiffusersParams,
        load_options=DiffusersLoadOptions,
    )

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self._kind, self._path, self._family, self._pipeline_class = self._inspect_source()
        self._pipe: Any = None
        self._modes: dict[str, Any] = {}
        self._loaded_loras: dict[str, float] = {}
        self._weights_hash: str | None = None
        self._device = "cpu"
        self._dtype_bytes = 4
        self._distilled = bool(self.options.distilled)

    # ------------------------------------------------------------ what is known before loading
    def _inspect_source(self) -> tuple[str, Path | None, str, str]:
        """(kind, path, family, pipeline class) — refuses a folder that is not a pipeline, a file of another family."""
        source = self.options.source
        path = Path(source).expanduser()
        if path.is_dir():
            index = path / "model_index.json"
            if not index.is_file():
                raise LoadFailedError(f"source: {path} is not a diffusers pipeline folder (model_index.json is missing). "
                                      f"Point it at the folder that holds model_index.json, unet/ and vae/, or at a "
                                      f"single .safetensors checkpoint.")
            try:
                cls = json.loads(index.read_text()).get("_class_name", "")
            except ValueError:
                raise LoadFailedError(f"source: {index} is not valid JSON.") from None
            return "folder", path, "sdxl" if "XL" in cls else "sd1", cls
        if path.suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
            if not path.is_file():
                raise LoadFailedError(f"source: checkpoint file not found: {path}")
            if path.suffix != ".safetensors":
                raise LoadFailedError(f"source: {path.name} is a pickle checkpoint, which can run code when read; "
                                      f"convert it to .safetensors first.")
            try:
                family, _ = sd_parts.single_file_family(path)
            except ValueError as exc:
                raise LoadFailedError(f"source: {exc}") from None
            except Exception as exc:  # a damaged header
                raise LoadFailedError(f"source: {path.name} is not a readable .safetensors file ({exc}).") from None
            return "file", path, family, "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
        if source.startswith((".", "/", "~")) or path.suffix:
            raise LoadFailedError(f"source: {path} does not exist.")
        if not self.options.allow_download:
            raise LoadFailedError(f"source: {source!r} is neither a local folder nor a file; as a hub id it would need a "
                                  f"download, which is off. Download it yourself and point source at the folder, or "
                                  f"set allow_download: true.")
        return "hub", None, "sdxl" if "xl" in source.lower() else "sd1", ""

    @property
    def image_size(self) -> tuple[int, int, int]:
        side = sd_parts.FAMILY_DEFAULT_SIDE.get(self._family, 512)
        return side, side, 3

    @property
    def lora_dir(self) -> Path | None:
        if self.options.lora_dir:
            return Path(self.options.lora_dir).expanduser()
        if self._path is None:
            return None
        return self._path / "loras" if self._kind == "folder" else self._path.with_name(self._path.stem + ".loras")

    def loras(self) -> list[str]:
        folder = self.lora_dir
        if folder is None or not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.safetensors"))

    def schedulers(self) -> list[str]:
        return sd_parts.scheduler_names(self._distilled)

    def defaults(self) -> dict[str, Any]:
        """Recommended settings for this model (the UI's starting values)."""
        side = self.image_size[0]
        if self._distilled:
            return {"width": side, "height": side, "steps": 4, "guidance": 1.0, "scheduler": "LCM"}
        return {"width": side, "height": side, "steps": 25, "guidance": 7.0, "scheduler": "DPM++ 2M"}

    @property
    def weights_hash(self) -> str:
        """sha256 (16 hex) of the checkpoint file, or of the folder's weight files in name order; A1111's
        "Model hash" is its first 10 digits."""
        if self._weights_hash is None:
            if self._path is None:
                self._weights_hash = hashlib.sha256(self.options.source.encode()).hexdigest()[:16]
            elif self._kind == "file":
                self._weights_hash = _sha256_16([self._path])
            else:
                self._weights_hash = _sha256_16(self._weight_files())
        return self._weights_hash

    def _weight_files(self) -> list[Path]:
        if self._path is None:
            return []
        if self._kind == "file":
            return [self._path]
        return sorted(p for p in self._path.rglob("*") if p.suffix in (".safetensors", ".bin")
                      and p.parent.name != "loras")

    def estimated_memory_bytes(self) -> int:
        size = sd_parts.folder_bytes(self._weight_files())
        return size // 2 if self._want_half() else size

    def memory_bytes(self) -> int:
        if self._pipe is None:
            return 0
        return sum(p.numel() * p.element_size() for c in self._pipe.components.values()
                   if hasattr(c, "parameters") for p in c.parameters())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self._family, "source_kind": self._kind, "schedulers": self.schedulers(),
                "loras": self.loras(), "defaults": self.defaults(), "image_size": list(self.image_size)}

    # ------------------------------------------------------------ lifecycle
    def _want_half(self) -> bool:
        if self.options.dtype != "auto":
            return self.options.dtype != "float32"
        return self._resolve_device() == "cuda"

    def _resolve_device(self) -> str:
        import torch

        device = self.options.device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise LoadFailedError(f"{self.name}: device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto.")
        return device

    def _torch_dtype(self, device: str) -> Any:
        import torch

        name = self.options.dtype
        if name == "auto":
            name = "float16" if device == "cuda" else "float32"
        if device == "cpu" and name == "float16":
            raise LoadFailedError(f"{self.name}: float16 is a GPU format (slow and lossy on a CPU); use float32 or "
                                  f"bfloat16 on cpu.")
        return getattr(torch, name)

    def _load(self, progress: ProgressFn) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        device = self._resolve_device()
        dtype = self._torch_dtype(device)
        progress(f"Loading {self.name} ({self._family}, {str(dtype).removeprefix('torch.')}) on {device}…")
        common = {"torch_dtype": dtype, "local_files_only": not self.options.allow_download}
        try:
            if self._kind == "file":
                import diffusers

                cls = getattr(diffusers, self._pipeline_class)
                kwargs: dict[str, Any] = dict(common)
                if self.options.config:
                    kwargs["config"] = self.options.config
                pipe = cls.from_single_file(str(self._path), **kwargs)
            else:
                location = str(self._path) if self._path is not None else self.options.source
                pipe = AutoPipelineForText2Image.from_pretrained(location, safety_checker=None, **common)
        except (OSError, ValueError) as exc:
            raise LoadFailedError(self._explain_load_failure(exc)) from exc
        pipe.set_progress_bar_config(disable=True)
        if getattr(pipe, "vae", None) is not None:
            pipe.vae.enable_slicing()  # one image at a time through the VAE: same pixels, less memory
        if self.options.distilled is None:
            self._distilled = type(pipe.scheduler).__name__ == "LCMScheduler" or \
                getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None
        self._place(pipe, device)
        self._pipe, self._device = pipe, device
        self._dtype_bytes = torch.tensor([], dtype=dtype).element_size()
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._modes = {"text-to-image": pipe}
        self._loaded_loras = {}
        progress("Hashing the weights…")
        self.weights_hash  # noqa: B018 - once at load, not on the first request

    def _explain_load_failure(self, exc: Exception) -> str:
        if self._kind == "file":
            return (f"{self.name}: the single file holds only weights; diffusers also needs the configs and tokenizer "
                    f"of its family ({self._family}). Give `config:` a local pipeline folder of the same family, or set "
                    f"allow_download: true to fetch them once. ({exc})")
        return f"{self.name}: could not load the pipeline from {self._path or self.options.source}: {exc}"

    def _place(self, pipe: Any, device: str) -> None:
        """Put the pipeline on its device; on CUDA offload to the CPU when asked or when the GPU is too small."""
        import torch

        offload = self.options.offload
        if device == "cuda" and offload == "auto":
            free, _total = torch.cuda.mem_get_info()
            offload = "model" if self.estimated_memory_bytes() * 1.3 > free else "none"
        if device == "cuda" and offload == "model":
            pipe.enable_model_cpu_offload()
        elif device == "cuda" and offload == "sequential":
            pipe.enable_sequential_cpu_offload()
        else:
            pipe.to(device)
        self._offload = offload if device == "cuda" else "none"

    def _unload(self) -> None:
        self._pipe = None
        self._modes = {}
        self._loaded_loras = {}

    # ------------------------------------------------------------ checks
    def check_paint(self, request: PaintRequest) -> None:
        super().check_paint(request)
        p = request.params
        if request.mode != "text-to-image" and int(p.steps * p.strength) < 1:
            raise InvalidOptionsError(f"strength: with {p.steps} steps a strength of {p.strength} runs no step; raise "
                                      f"strength or steps (steps × strength ≥ 1).")
        scale = 8
        if p.width % scale or p.height % scale:
            raise InvalidOptionsError(f"width/height: must be multiples of {scale}; got {p.width}×{p.height}.")
        self._check_memory(request)

    def _tiled(self, width: int, height: int) -> bool:
        option = self.options.vae_tiling
        return option == "on" or (option == "auto" and width * height > 1024 * 1024)

    def _check_memory(self, request: PaintRequest) -> None:
        """Refuse a request that cannot fit in the memory left, saying what to change."""
        p = request.params
        scale = 2 ** (len(self._pipe.vae.config.block_out_channels) - 1) if self._pipe is not None else 8
        need = sd_parts.request_bytes(p.width, p.height, request.count, p.guidance, self._dtype_bytes, scale,
                                      self._tiled(p.width, p.height))
        free = self._free_bytes()
        if free is None or need <= free:
            return
        gib = 2**30
        where = "GPU" if self._device == "cuda" else "RAM"
        raise InvalidOptionsError(
            f"This request needs about {need / gib:.1f} GiB of {where} beside the model and {free / gib:.1f} GiB is free: "
            f"lower the batch size (count) or width/height, or set the model's vae_tiling: on"
            f"{'' if self._device != 'cuda' or self._offload != 'none' else ' or offload: model'}.")

    def _free_bytes(self) -> int | None:
        if self._device == "cuda":
            import torch

            free, _total = torch.cuda.mem_get_info()
            return int(free)
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    # ------------------------------------------------------------ LoRA
    def _apply_loras(self, wanted: dict[str, float]) -> dict[str, str]:
        """Make the pipeline's LoRAs exactly `wanted` (name → weight); returns name → file hash (10 hex)."""
        pipe = self._pipe
        if set(wanted) != set(self._loaded_loras):
            if self._loaded_loras:
                pipe.unload_lora_weights()  # back to the exact base weights
                self._loaded_loras = {}
            for name in wanted:
                self._load_lora(name)
                self._loaded_loras[name] = 0.0
        if wanted:
            pipe.set_adapters([_adapter_name(n) for n in wanted], adapter_weights=list(wanted.values()))
            self._loaded_loras = dict(wanted)
        folder = self.lora_dir
        return {n: _sha256_16([folder / f"{n}.safetensors"])[:10] for n in wanted} if folder else {}

    def _load_lora(self, name: str) -> None:
        pipe, folder, adapter = self._pipe, self.lora_dir, _adapter_name(name)
        before = {k: sum(v.numel() for v in c.state_dict().values()) for k, c in pipe.components.items()
                  if hasattr(c, "state_dict")}
        try:
            pipe.load_lora_weights(str(folder), weight_name=f"{name}.safetensors", adapter_name=adapter)
        except Exception as exc:  # shape mismatches, foreign key layouts: a LoRA for another model
            self._drop_loras()
            raise InvalidOptionsError(f"loras: {name!r} does not fit {self.name} ({self._family}): {_short(exc)}") from None
        adapters = {a for names in pipe.get_list_adapters().values() for a in names}
        after = {k: sum(v.numel() for v in c.state_dict().values()) for k, c in pipe.components.items()
                 if hasattr(c, "state_dict")}
        if adapter not in adapters or after == before:
            self._drop_loras()
            raise InvalidOptionsError(f"loras: {name!r} does not fit {self.name} ({self._family}): none of its layers "
                                      f"match this model's — is it made for another family?")

    def _drop_loras(self) -> None:
        try:
            self._pipe.unload_lora_weights()
        finally:
            self._loaded_loras = {}

    # ------------------------------------------------------------ the call
    def _pipeline_for(self, mode: str) -> Any:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        if mode not in self._modes:
            auto = AutoPipelineForImage2Image if mode == "image-to-image" else AutoPipelineForInpainting
            pipe = auto.from_pipe(self._pipe)
            pipe.set_progress_bar_config(disable=True)
            self._modes[mode] = pipe
        return self._modes[mode]

    def _paint(self, request: PaintRequest, control: StepControl) -> ImageOutput:
        """The contract has checked the request (`check_paint`) and the cancel, and runs this on the compute lane."""
        import numpy as np
        import torch
        from PIL import Image

        p = request.params
        lora_hashes = self._apply_loras({lo.name: lo.weight for lo in p.loras})
        pipe = self._pipeline_for(request.mode)
        pipe.scheduler = sd_parts.make_scheduler(p.scheduler, self._base_scheduler_config)
        if self._tiled(p.width, p.height):
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()

        def on_step_end(pipeline: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            latents = tensors["latents"]
            control.step(i + 1, pipeline.num_timesteps, lambda: sd_parts.latent_preview(latents, self._family))
            return {}

        kwargs: dict[str, Any] = {
            "prompt": [p.prompt] * request.count,
            "negative_prompt": [p.negative_prompt] * request.count if p.negative_prompt else None,
            "num_inference_steps": p.steps, "guidance_scale": p.guidance,
            "generator": [torch.Generator("cpu").manual_seed(s) for s in request.seeds],
            "callback_on_step_end": on_step_end, "output_type": "np",
        }
        if request.mode == "text-to-image":
            kwargs.update(width=p.width, height=p.height)
        else:
            kwargs.update(image=Image.fromarray(request.init_image), strength=p.strength)
        if request.mode == "inpaint":
            kwargs.update(mask_image=Image.fromarray(np.where(request.mask > 0, 255, 0).astype(np.uint8), "L"),
                          width=p.width, height=p.height)
        with torch.inference_mode():
            images = pipe(**kwargs).images  # (N, H, W, 3) float in [0, 1]
        pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
        if request.mode == "inpaint":  # outside the mask the init image stays exactly as it was
            pixels = np.where((request.mask > 0)[None, ..., None], pixels, request.init_image[None])
        details = {"family": self._family, "mode": request.mode,
                   "scheduler_class": type(pipe.scheduler).__name__, "dtype": str(pipe.unet.dtype).removeprefix("torch."),
                   "loras": [{"name": lo.name, "weight": lo.weight, "hash": lora_hashes.get(lo.name, "")} for lo in p.loras],
                   "model_file": self._path.name if self._path is not None else self.options.source}
        return ImageOutput(pixels, self.weights_hash, details)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "…"
