"""A ComfyUI ``models/`` tree of tiny fixture files, built once into a cache and linked per session.

The cache lives in ``<repo>/.cache/fixtures/<version>/`` (gitignored). ``<version>`` hashes the
sources that decide the files' content (``harness/dims.py``, ``tiny_models.py``, this file and
``adapter_factory.py`` when present), so an edit to any of them builds a fresh cache and an unchanged
checkout reuses the old one. Building takes a lock, so parallel sessions build it once.

``build_models_dir(models_dir)`` links (hard link, else symlink) every cached file into a ComfyUI
``models/`` folder:

* ``checkpoints/tiny_sd15.safetensors`` / ``tiny_sdxl.safetensors``: full tiny pipelines (UNet, text
  encoder(s), TAESD VAE) that ``CheckpointLoaderSimple`` loads once
  ``tiny_models.register_tiny_models()`` has run (the SDXL file is stored in fp16);
* ``clip_vision/``: tiny ViT-H, ViT-bigG and ViT-L-336 under their canonical names, plus
  ``sub/model.safetensors`` (a tiny ViT-H under the name the download keeps); they load through
  ``CLIPVisionLoader`` once ``tiny_models.register_tiny_clip_vision()`` has run;
* ``ipadapter/<family>.safetensors`` for every family of ``harness.adapter_factory`` (and a few
  ``.bin`` copies), skipped with a warning while that module is missing;
* ``loras/``: FaceID LoRA files when the factory provides them, else empty.

Needs ComfyUI booted (``harness.runtime.boot``) before the first build.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO_ROOT
CACHE_ROOT = REPO_ROOT / ".cache" / "fixtures"
FORMAT = 1  # bump to force a rebuild when the layout changes in a way the hashed sources do not show

CHECKPOINT_SD15 = "tiny_sd15.safetensors"
CHECKPOINT_SDXL = "tiny_sdxl.safetensors"  # stored in fp16 (half the disk); ComfyUI casts it on load
CLIP_VISION_SUB = "sub/model.safetensors"  # a ViT-H file as the download names it
# IP-Adapter families that also get a .bin copy (the format several of them ship in).
BIN_COPIES = ("ip-adapter_sd15", "ip-adapter-faceid_sd15", "ip-adapter-faceid-plusv2_sd15")
FOLDERS = ("checkpoints", "clip_vision", "ipadapter", "loras")
KEEP_VERSIONS = 3  # cache versions kept on disk (each is about 230 MB)

log = logging.getLogger(__name__)


def _hashed_sources() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here / "dims.py", here / "tiny_models.py", here / "model_tree.py", here / "adapter_factory.py"]


def fixture_version() -> str:
    """Hash of what decides the cached files' content (missing sources count as absent)."""
    h = hashlib.sha256(f"format {FORMAT}".encode())
    for path in _hashed_sources():
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.exists() else b"<absent>")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return CACHE_ROOT / fixture_version()


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive file lock: parallel test processes build a fixture once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save_safetensors(state_dict: dict, path: Path) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata={"format": "pt"})


def _load_factory():
    """``harness.adapter_factory`` or None when it has not landed yet."""
    try:
        return importlib.import_module("harness.adapter_factory")
    except ModuleNotFoundError as e:
        if e.name not in ("harness.adapter_factory",):
            raise
        return None


def _build_ipadapter_files(root: Path, seed: int) -> list[str]:
    factory = _load_factory()
    if factory is None:
        log.warning("harness.adapter_factory is missing: the fixture models/ipadapter folder stays empty")
        return []
    written = []
    for family in factory.FAMILIES:
        rel = f"ipadapter/{family}.safetensors"
        factory.write_checkpoint(family, root / rel, scale="tiny", seed=seed)
        written.append(rel)
        if family in BIN_COPIES:
            rel_bin = f"ipadapter/{family}.bin"
            factory.write_checkpoint(family, root / rel_bin, scale="tiny", seed=seed)
            written.append(rel_bin)
    # FaceID LoRAs, when the factory makes them (optional API: write_lora(family, path, scale, seed)).
    write_lora = getattr(factory, "write_lora", None)
    if write_lora is not None:
        for family in factory.FAMILIES:
            if "faceid" in family and "portrait" not in family:
                rel = f"loras/{family}_lora.safetensors"
                write_lora(family, root / rel, scale="tiny", seed=seed)
                written.append(rel)
    return written


def _build(root: Path, seed: int = 0) -> dict:
    from harness import tiny_models

    files: list[str] = []
    rel = f"checkpoints/{CHECKPOINT_SD15}"
    _save_safetensors(tiny_models.checkpoint_state_dict("sd15", seed), root / rel)
    files.append(rel)
    rel = f"checkpoints/{CHECKPOINT_SDXL}"
    sdxl = tiny_models.checkpoint_state_dict("sdxl", seed)
    _save_safetensors({k: v.half() if v.is_floating_point() else v for k, v in sdxl.items()}, root / rel)
    files.append(rel)
    for name, filename in tiny_models.CLIP_VISION_FILENAMES.items():
        rel = f"clip_vision/{filename}"
        _save_safetensors(tiny_models.clip_vision_state_dict(name, seed), root / rel)
        files.append(rel)
    rel = f"clip_vision/{CLIP_VISION_SUB}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(root / "clip_vision" / tiny_models.CLIP_VISION_FILENAMES["vit-h"], root / rel)
    files.append(rel)
    files += _build_ipadapter_files(root, seed)
    return {"version": fixture_version(), "files": sorted(files)}


def ensure_cache() -> tuple[Path, dict]:
    """Build the cache for this version unless it is there; return (its folder, its manifest)."""
    target = cache_dir()
    manifest_path = target / "manifest.json"
    if not manifest_path.exists():
        with locked(CACHE_ROOT / f"{target.name}.lock"):
            if not manifest_path.exists():
                start = time.perf_counter()
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE_ROOT))
                try:
                    manifest = _build(tmp)
                    manifest["build_seconds"] = round(time.perf_counter() - start, 3)
                    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
                    os.chmod(tmp, 0o755)
                    if target.exists():  # a half-built folder from a killed run
                        shutil.rmtree(target)
                    os.replace(tmp, target)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                log.info("built fixture cache %s in %.2f s", target, time.perf_counter() - start)
                _prune_old_versions(keep=target)
    return target, json.loads(manifest_path.read_text())


def _prune_old_versions(keep: Path, newest: int = KEEP_VERSIONS) -> None:
    """Delete all but the ``newest`` cache versions (links already made into models dirs stay valid:
    they are hard links; only a cross-file-system symlink would dangle)."""
    versions = [p for p in CACHE_ROOT.iterdir() if p.is_dir() and (p / "manifest.json").exists() and p != keep]
    versions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in versions[max(0, newest - 1):]:
        shutil.rmtree(old, ignore_errors=True)
        (CACHE_ROOT / f"{old.name}.lock").unlink(missing_ok=True)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system: a symlink does as well for ComfyUI's folder scans
        dst.symlink_to(src)


def build_models_dir(models_dir: Path) -> dict[str, Path]:
    """Fill ``models_dir`` with links to the cached fixture files; return {relative name: path}.

    Relative names use ``/`` and are what ComfyUI's folder lists show once the folder type is stripped,
    e.g. ``"checkpoints/tiny_sd15.safetensors"``, ``"clip_vision/sub/model.safetensors"``.
    """
    models_dir = Path(models_dir)
    root, manifest = ensure_cache()
    for folder in FOLDERS:
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
    out = {}
    for rel in manifest["files"]:
        _link(root / rel, models_dir / rel)
        out[rel] = models_dir / rel
    return out


@dataclass(frozen=True)
class FixturePaths:
    """Where the fixture files are in a models dir, and the names ComfyUI's loader nodes take."""

    models_dir: Path
    cache_dir: Path
    checkpoint_sd15: Path
    checkpoint_sd15_name: str  # CheckpointLoaderSimple ckpt_name
    checkpoint_sdxl: Path
    checkpoint_sdxl_name: str
    clip_vision: dict = field(default_factory=dict)  # "vit-h" / "vit-g" / "vit-l-336" -> path
    clip_vision_names: dict = field(default_factory=dict)  # same keys -> CLIPVisionLoader clip_name
    clip_vision_sub: Path | None = None
    ipadapter: dict = field(default_factory=dict)  # "<family>.safetensors" / ".bin" -> path
    loras_dir: Path | None = None


def fixture_paths(models_dir: Path) -> FixturePaths:
    """The record of the important fixture paths under ``models_dir`` (as ``build_models_dir`` lays it out)."""
    from harness import tiny_models

    models_dir = Path(models_dir)
    ipadapter_dir = models_dir / "ipadapter"
    ipadapter = (
        {p.name: p for p in sorted(ipadapter_dir.iterdir()) if p.suffix in (".safetensors", ".bin")}
        if ipadapter_dir.is_dir()
        else {}
    )
    return FixturePaths(
        models_dir=models_dir,
        cache_dir=cache_dir(),
        checkpoint_sd15=models_dir / "checkpoints" / CHECKPOINT_SD15,
        checkpoint_sd15_name=CHECKPOINT_SD15,
        checkpoint_sdxl=models_dir / "checkpoints" / CHECKPOINT_SDXL,
        checkpoint_sdxl_name=CHECKPOINT_SDXL,
        clip_vision={k: models_dir / "clip_vision" / v for k, v in tiny_models.CLIP_VISION_FILENAMES.items()},
        clip_vision_names=dict(tiny_models.CLIP_VISION_FILENAMES),
        clip_vision_sub=models_dir / "clip_vision" / CLIP_VISION_SUB,
        ipadapter=ipadapter,
        loras_dir=models_dir / "loras",
    )
