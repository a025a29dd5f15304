"""Run API-format ComfyUI prompts in this process with ComfyUI's own validator and ``PromptExecutor``.

ComfyUI must be booted first (``harness.runtime.boot`` + ``init_nodes``). One executor is kept per
process (``get_executor()``); its cache is ComfyUI's CLASSIC cache, so an unchanged node is not run
twice across prompts, exactly as in the server.

    result = run_prompt(workflow_plain_sd15(seed=1))   # or workflow_plain_sdxl
    result.raise_for_error()
    result.images          # paths of the files SaveImage / PreviewImage wrote
    result.image_tensors() # the same as [H, W, C] float tensors in 0..1
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import execution
import folder_paths

_executor = None


class PromptValidationError(RuntimeError):
    """ComfyUI rejected the prompt before running it (``execution.validate_prompt``)."""

    def __init__(self, error: dict, node_errors: dict):
        self.error = error or {}
        self.node_errors = node_errors or {}
        lines = [f"prompt failed validation: {self.error.get('type')}: {self.error.get('message')} {self.error.get('details', '')}".rstrip()]
        for node_id, info in self.node_errors.items():
            for err in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
        super().__init__("\n".join(lines))


class PromptExecutionError(RuntimeError):
    """A node raised while the prompt ran."""

    def __init__(self, error: dict):
        self.error = error
        super().__init__(
            f"node {error.get('node_id')} ({error.get('node_type')}) raised "
            f"{error.get('exception_type')}: {error.get('exception_message')}\n{''.join(error.get('traceback', []))}"
        )


class _HeadlessServer:
    """The part of ``server.PromptServer`` that ``PromptExecutor`` and its progress handler use."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class Result:
    prompt_id: str
    success: bool
    outputs: dict  # history_result["outputs"]: {node_id: ui dict}
    meta: dict = field(default_factory=dict)
    status_messages: list = field(default_factory=list)
    error: dict | None = None  # the execution_error (or execution_interrupted) message on failure
    images: list[Path] = field(default_factory=list)  # files written by image output nodes
    seconds: float = 0.0

    def raise_for_error(self) -> "Result":
        if not self.success:
            raise PromptExecutionError(self.error or {"exception_message": "unknown failure"})
        return self

    def image_tensors(self):
        """The written images as float tensors [H, W, C] in 0..1 (PIL + numpy, as LoadImage reads them)."""
        import numpy as np
        import torch
        from PIL import Image

        tensors = []
        for path in self.images:
            with Image.open(path) as img:
                tensors.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0))
        return tensors

    def latent(self, node: str = "7"):
        """The latent a SaveLatent node (id ``node``) wrote, as a tensor (the DiT workflows save latents)."""
        (latent,) = self.latents(node)
        return latent

    def latents(self, node: str = "7") -> list:
        """Every latent a SaveLatent node wrote (one per item when it ran on a list), in order."""
        from safetensors.torch import load_file

        self.raise_for_error()
        folder = Path(folder_paths.get_output_directory())
        return [load_file(str(folder / saved["subfolder"] / saved["filename"]))["latent_tensor"]
                for saved in self.outputs[node]["latents"]]


def get_executor():
    """The process's single ``execution.PromptExecutor`` (created on first use)."""
    global _executor
    if _executor is None:
        _executor = execution.PromptExecutor(
            _HeadlessServer(),
            cache_type=execution.CacheType.CLASSIC,
            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
        )
    return _executor


def validate(prompt: dict, prompt_id: str | None = None) -> list[str]:
    """Validate ``prompt`` like the server's POST /prompt; return the output node ids to execute."""
    prompt_id = prompt_id or str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise PromptValidationError(error, node_errors)
    return outputs


def _image_paths(outputs: dict) -> list[Path]:
    bases = {
        "output": folder_paths.get_output_directory(),
        "temp": folder_paths.get_temp_directory(),
        "input": folder_paths.get_input_directory(),
    }
    paths = []
    for ui in outputs.values():
        for item in ui.get("images", []) or []:
            if isinstance(item, dict) and "filename" in item:
                base = bases.get(item.get("type", "output"), bases["output"])
                paths.append(Path(base) / item.get("subfolder", "") / item["filename"])
    return paths


def run_prompt(prompt: dict, extra_data: dict | None = None) -> Result:
    """Validate and execute an API-format prompt; raise PromptValidationError if ComfyUI rejects it.

    A node failing at run time does not raise: the result has ``success=False`` and ``error`` set
    (``result.raise_for_error()`` turns it into an exception).
    """
    import time

    prompt_id = str(uuid.uuid4())
    execute_outputs = validate(prompt, prompt_id)
    ex = get_executor()
    start = time.perf_counter()
    ex.execute(prompt, prompt_id, extra_data or {}, execute_outputs)
    seconds = time.perf_counter() - start
    history = getattr(ex, "history_result", None) or {"outputs": {}, "meta": {}}
    error = None
    for event, data in ex.status_messages:
        if event in ("execution_error", "execution_interrupted"):
            error = {"event": event, **data}
    return Result(
        prompt_id=prompt_id,
        success=bool(ex.success) and error is None,
        outputs=history.get("outputs", {}),
        meta=history.get("meta", {}),
        status_messages=list(ex.status_messages),
        error=error,
        images=_image_paths(history.get("outputs", {})),
        seconds=seconds,
    )


def workflow_plain_sd15(
    seed: int = 0,
    steps: int = 4,
    cfg: float = 5.0,
    ckpt_name: str = "tiny_sd15.safetensors",
    positive: str = "a photo of a cat",
    negative: str = "blurry",
    width: int = 64,
    height: int = 64,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    filename_prefix: str = "plain_sd15",
) -> dict:
    """API prompt: CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }


def workflow_plain_sdxl(seed: int = 0, steps: int = 2, **kwargs) -> dict:
    """The plain text-to-image prompt on the tiny SDXL checkpoint (``tiny_sdxl.safetensors``)."""
    kwargs.setdefault("ckpt_name", "tiny_sdxl.safetensors")
    kwargs.setdefault("filename_prefix", "plain_sdxl")
    return workflow_plain_sd15(seed=seed, steps=steps, **kwargs)
