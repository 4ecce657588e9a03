"""Service settings: one typed object, from CLI flags or ``ALEXNET_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "model" / "weights" / "catdog.safetensors"


class Settings(BaseSettings):
    """Every field is also the environment variable ``ALEXNET_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ALEXNET_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    checkpoint: Path = Field(
        DEFAULT_CHECKPOINT,
        description="Model file: our .safetensors, a state-dict .pth, or torchvision's AlexNet weights.",
    )
    labels: str | None = Field(None, description="Comma-separated class names, overriding the checkpoint's.")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Serving precision; auto = bf16 on CPUs with native bf16 and on CUDA, else fp32."
    )
    compile: bool = Field(False, description="torch.compile the model (slower start, faster inference).")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Largest batch the model runs.")
    max_delay_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for more items, counted from its first item's arrival.",
    )
    max_queue: int = Field(256, ge=1, description="Images waiting for the model before new ones get 429.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="An image that waited longer than this for the model gets 504."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width × height accepted (decompression-bomb guard); larger get 422."
    )
    max_files: int = Field(32, ge=1, description="Most images in one multipart request.")
    preprocess_threads: int = Field(2, ge=1, le=64, description="Threads that decode and resize uploads.")
    torch_threads: int = Field(0, ge=0, description="Threads for the model on CPU; 0 = one per core.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"checkpoint file {str(path)!r} does not exist")
        return path

    @property
    def label_list(self) -> list[str] | None:
        return [name.strip() for name in self.labels.split(",")] if self.labels else None
