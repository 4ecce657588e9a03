"""Service settings: one typed object, from CLI flags or ``ALEXNET_*`` environment variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_path
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "model" / "weights" / "catdog.safetensors"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_API_KEY = re.compile(r"[!-~]+")  # printable ASCII, no space


def parse_models(text: str) -> dict[str, Path]:
    """``a=/x.safetensors,b=/y.pth`` → ``{"a": Path("/x.safetensors"), ...}``; raises ``ValueError``."""
    models: dict[str, Path] = {}
    for entry in (part.strip() for part in text.split(",")):
        name, sep, path = (piece.strip() for piece in entry.partition("="))
        if not sep or not path:
            raise ValueError(f"{entry!r} is not name=path")
        if not _MODEL_NAME.fullmatch(name):
            raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-' (64 at most)")
        if name in models:
            raise ValueError(f"model name {name!r} appears twice")
        if not Path(path).is_file():
            raise ValueError(f"checkpoint file {path!r} for model {name!r} does not exist")
        models[name] = Path(path)
    return models


class Settings(BaseSettings):
    """Every field is also the environment variable ``ALEXNET_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ALEXNET_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    models: str | None = Field(
        None,
        description="Several models: comma-separated name=path pairs, the first being the default; "
        "unset = serve checkpoint under its own name.",
    )
    checkpoint: Path = Field(
        DEFAULT_CHECKPOINT,
        description="Model file: our .safetensors, a state-dict .pth, or torchvision's AlexNet weights.",
    )
    labels: str | None = Field(None, description="Comma-separated class names, overriding the checkpoint's.")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="Serving precision; int8 = static int8 (CPU, calibrated checkpoints); auto = int8 on CPUs with "
        "VNNI or AMX when the checkpoint is calibrated and compiled, else bf16 on CPUs with native bf16 and on CUDA, "
        "else fp32.",
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model: faster inference, ~20 s more start-up when its cache is cold. "
        "Unset: on for the CPU, off for CUDA (not yet measured on a GPU).",
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="Largest batch the model runs.")
    max_delay_ms: float = Field(
        20.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for images still being decoded, never when none are; "
        "counted from when the model is free with CPU turns, else from the oldest image's arrival.",
    )
    max_queue: int | None = Field(
        None,
        ge=1,
        description="Images a model has taken on (uploading, decoding, waiting or in a batch) before new requests "
        "get 429 at once. Unset: about 1 s of work, measured at warm-up (never less than one batch).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline from a request's arrival to its answer (upload, decoding, queue): 504."
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request's headers (from connecting) and its body (from its headers) must each arrive within "
        "this; else 408 and the connection is closed.",
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM: the longest the server waits for requests it received to be answered."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections before new ones get 503 and are closed (keep under `ulimit -n`)."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request head (request line and headers, counted as they arrive); larger ones get 431 "
        "and the connection is closed.",
    )
    max_request_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Most pixels decoded for one request of several images (JPEGs count at their reduced decode "
        "size); more get 422.",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width × height accepted (decompression-bomb guard); larger get 422."
    )
    max_files: int = Field(32, ge=1, description="Most images in one multipart request.")
    preprocess_threads: int = Field(2, ge=1, le=64, description="Threads that decode and resize uploads.")
    gpu_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: JPEGs (RGB or grey) are decoded, resized and cropped in batches on the model's device "
        "(nvjpeg on CUDA, torchvision on the CPU); other formats and broken files keep the CPU path. "
        "auto = on for CUDA only.",
    )
    torch_threads: int = Field(
        0, ge=0, description="Threads for the model on CPU; 0 = one per core, shared out among the workers."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes on one port, each with its own copy of the model and its own batcher; "
        "1 = one process, no supervisor.",
    )
    cpu_turns: bool = Field(
        True,
        description="On the CPU, decoding and model batches take turns on the cores instead of pre-empting each other.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="json: one JSON object per line (one per request, torch's warnings included); "
        "text: for humans; auto: text on a terminal, else json.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: user_cache_path("alexnet-serving"),
        description="torch.compile's cache (Inductor, Triton): kept here, a restart with the same model skips "
        "compiling. Default: the per-user cache folder (~/.cache/alexnet-serving, or under $XDG_CACHE_HOME).",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys. Set: /predict, /models, /metrics and the V2 model routes need one "
        "(`Authorization: Bearer <key>` or `X-API-Key: <key>`), else 401. Unset: open.",
    )
    cors_origins: str | None = Field(
        None,
        description="Comma-separated origins browsers may call the API from (CORS), `*` for any. "
        "Unset: no CORS headers.",
    )

    @field_validator("models")
    @classmethod
    def _models_parse(cls, text: str | None) -> str | None:
        if text is not None:
            parse_models(text)
        return text

    @field_validator("api_keys")
    @classmethod
    def _api_keys_parse(cls, keys: SecretStr | None) -> SecretStr | None:
        if keys is not None:
            listed = _comma_list(keys.get_secret_value())
            if not listed:
                raise ValueError("set at least one key, or unset it")
            if not all(_API_KEY.fullmatch(key) for key in listed):  # the message never shows a key
                raise ValueError("a key may hold only printable ASCII without spaces (it travels in a header)")
        return keys

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path, info: ValidationInfo) -> Path:
        if info.data.get("models") is None and not path.is_file():
            raise ValueError(f"checkpoint file {str(path)!r} does not exist")
        return path

    @field_validator("labels")
    @classmethod
    def _labels_need_one_model(cls, labels: str | None, info: ValidationInfo) -> str | None:
        if labels is not None and info.data.get("models") is not None:
            raise ValueError("labels names one model's classes; with models give each a <file>.labels.txt sidecar")
        return labels

    @property
    def served_models(self) -> dict[str | None, Path]:
        """Name → checkpoint for each served model, default first (name None: the checkpoint's own)."""
        if self.models is None:
            return {None: self.checkpoint}
        return dict(parse_models(self.models))

    @property
    def label_list(self) -> list[str] | None:
        return [name.strip() for name in self.labels.split(",")] if self.labels else None

    @property
    def api_key_list(self) -> list[str]:
        """The accepted API keys; empty when the API is open."""
        return _comma_list(self.api_keys.get_secret_value()) if self.api_keys else []

    @property
    def cors_origin_list(self) -> list[str]:
        return _comma_list(self.cors_origins or "")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
