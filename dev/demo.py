"""Demo: run example_workflows/ipadapter_simple.json through ComfyUI's executor and write the image.

Uses your real models when your ComfyUI models folder has them (``COMFYUI_PATH/models``, or the folder
named by ``IPADAPTER_DEMO_MODELS``):
    checkpoints/v1-5-pruned-emaonly.safetensors
    ipadapter/ip-adapter-plus_sd15.safetensors
    clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors
Otherwise it runs the same workflow on tiny synthetic stand-ins (random weights: the image is noise,
but every node, the adapter and the sampler really run) and says so.

    .venv/bin/python dev/demo.py [--reference image.png] [--output-dir demo_output]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from harness import REPO_ROOT as REPO, runtime

WORKFLOW = REPO / "example_workflows" / "ipadapter_simple.json"
REAL_FILES = {
    "checkpoints": "v1-5-pruned-emaonly.safetensors",
    "ipadapter": "ip-adapter-plus_sd15.safetensors",
    "clip_vision": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
}
REFERENCE_NAME = "ipadapter_reference.png"


def user_models_dir(comfy_path: Path) -> Path:
    return Path(os.environ.get("IPADAPTER_DEMO_MODELS", comfy_path / "models"))


def write_reference(path: Path) -> None:
    """A synthetic, colourful reference image (so the demo needs no download)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256] / 255.0
    rgb = np.stack([0.5 + 0.5 * np.sin(6 * x), 0.5 + 0.5 * np.cos(5 * y), (x * y) ** 0.5], -1)
    Image.fromarray((rgb * 255).astype("uint8")).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="reference image (default: a synthetic pattern)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo_output")
    args = parser.parse_args()
    out_dir = args.output_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="ipadapter-demo-"))
    rt = runtime.boot(base)
    runtime.init_nodes(load_pack=True)
    print(f"runtime: {rt.describe()}")

    import folder_paths
    import nodes

    folder_paths.set_output_directory(str(out_dir))

    from harness import executor, model_tree, tiny_models, workflow

    models = base / "models"
    real_dir = user_models_dir(rt.path)
    real = all((real_dir / folder / name).is_file() for folder, name in REAL_FILES.items())
    prompt = workflow.to_api(workflow.load(WORKFLOW), nodes.NODE_CLASS_MAPPINGS)
    if real:
        print(f"models: your real models from {real_dir}")
        for folder, name in REAL_FILES.items():
            (models / folder).mkdir(parents=True, exist_ok=True)
            (models / folder / name).symlink_to(real_dir / folder / name)
    else:
        missing = [f"{folder}/{name}" for folder, name in REAL_FILES.items() if not (real_dir / folder / name).is_file()]
        print(f"models: TINY SYNTHETIC stand-ins (random weights, the image is noise); to use real models put "
              f"{', '.join(missing)} under {real_dir} (or point COMFYUI_PATH at your ComfyUI, or "
              f"IPADAPTER_DEMO_MODELS at a models folder)")
        tiny_models.register_all()
        model_tree.build_models_dir(models)
        workflow.use_tiny_models(prompt, model_tree.fixture_paths(models).checkpoint_sd15_name)
    reference = Path(folder_paths.get_input_directory()) / REFERENCE_NAME
    if args.reference:
        shutil.copy(args.reference, reference)
    else:
        write_reference(reference)

    result = executor.run_prompt(prompt).raise_for_error()
    image = result.images[0]
    print(f"image prompt workflow ran in {result.seconds:.1f} s -> {image}")
    # The same graph at weight 0 shows what the image prompt changed.
    by_type = {node["class_type"]: node for node in prompt.values()}
    by_type["IPAdapterAdvanced"]["inputs"]["weight"] = 0.0
    by_type["SaveImage"]["inputs"]["filename_prefix"] = "ipadapter_simple_weight0"
    plain = executor.run_prompt(prompt).raise_for_error()
    a, b = result.image_tensors()[0], plain.image_tensors()[0]
    print(f"same workflow at weight 0 -> {plain.images[0]}; mean |difference| {float((a - b).abs().mean()):.4f} "
          f"(0..1 pixel scale)")


if __name__ == "__main__":
    main()
