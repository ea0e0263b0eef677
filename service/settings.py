"""Service settings: ``CURATE_*`` environment variables or a ``.env`` file."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CURATE_", env_file=".env", extra="ignore")

    home: Path = Field(Path.home() / ".curate", description="catalog, API keys, local Ray state")
    host: str = "127.0.0.1"
    port: int = 8000
    # Job inputs must lie under one of these (``:``-separated in the environment).
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path.cwd()])
    # Files a stage reads (models, calibration sets) may also lie under these.
    model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Job outputs must lie under this; relative outputs are placed here.
    output_root: Path | None = None
    max_body_bytes: int = Field(1 << 20, description="largest accepted request body")
    # Per API key: stops one runaway client from starving the others, far above what a
    # dashboard or a training job's loader asks for. 0 turns it off.
    rate_limit_per_second: float = Field(1000.0, description="requests per second per API key (0: no limit)")
    rate_limit_burst: int = Field(2000, description="requests a key may make at once before the rate applies")
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    # Ray's job server; default: port 8265 on the RAY_ADDRESS host.
    ray_jobs_url: str | None = None
    # Interpreter that runs job drivers on the cluster.
    driver_python: str | None = None
    poll_seconds: float = 1.0
    # One log line per request costs the event loop about a tenth of its time under load
    # (bench/bench_api_wrk.py); errors are logged either way.
    access_log: bool = Field(False, description="log every request (uvicorn's access log)")

    @field_validator("data_roots", "model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.split(":") if p]
        return value

    @cached_property
    def outputs(self) -> Path:
        return (self.output_root or self.home / "runs").resolve()

    @cached_property
    def roots(self) -> list[Path]:
        return [p.resolve() for p in self.data_roots]

    @cached_property
    def file_roots(self) -> list[Path]:
        return [p.resolve() for p in self.model_roots]

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def keys_path(self) -> Path:
        return self.home / "api_keys.json"

    def jobs_url(self) -> str | None:
        if self.ray_jobs_url:
            return self.ray_jobs_url
        if self.ray_address:
            if self.ray_address.startswith("http"):
                return self.ray_address
            host = self.ray_address.removeprefix("ray://").split(":")[0]
            return f"http://{host}:8265"
        return None

    def python(self) -> str:
        return self.driver_python or (sys.executable if not self.ray_address else "python")
