"""Loads a diffusers pipeline from a local directory and runs one batched call with step hooks.

This is the only module that imports torch and diffusers (the `diffusers` extra); importing it
without them fails at start-up, never mid-request.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Set before diffusers/huggingface_hub read them: weights come from disk only, never a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from services.diffusers.call import Call

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Interrupted(Exception):
    """Raised from the step callback to stop denoising between two steps."""


def resolve_device(wanted: str) -> str:
    """'auto' is the first CUDA device when one is present, else the CPU."""
    if wanted != "auto":
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(wanted: str, device: str) -> torch.dtype:
    """'auto' is float16 on CUDA (half the memory, same images) and float32 elsewhere."""
    if wanted == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[wanted]


class LoadedPipeline:
    """A pipeline on its device; `run` is blocking and is called from one worker thread."""

    def __init__(self, path: Path, *, device: str = "auto", dtype: str = "auto") -> None:
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a diffusers model directory (no model_index.json)"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        pipe: Any = DiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, dtype=self.dtype
        )
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        self._accepts = set(inspect.signature(pipe.__call__).parameters)
        self.pipeline_class = type(pipe).__name__

    def run(self, call: Call, on_step: Callable[[int, int], None]) -> list[Image.Image]:
        """Denoises and decodes the batch; `on_step(done, total)` runs after every step and may
        raise Interrupted to stop before the next one."""
        pipe = self._pipe

        def step_end(
            _pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            on_step(step + 1, call.steps)
            return kwargs

        args: dict[str, Any] = {
            "prompt": call.prompt,
            "num_inference_steps": call.steps,
            "guidance_scale": call.guidance_scale,
            "width": call.width,
            "height": call.height,
            "num_images_per_prompt": call.num_images,
            "generator": [torch.Generator(device="cpu").manual_seed(seed) for seed in call.seeds],
            "output_type": "pil",
            "callback_on_step_end": step_end,
        }
        if call.negative_prompt and "negative_prompt" in self._accepts:
            args["negative_prompt"] = call.negative_prompt
        args = {k: v for k, v in args.items() if k in self._accepts}
        with torch.inference_mode():
            out = pipe(**args)
        return list(out.images)
