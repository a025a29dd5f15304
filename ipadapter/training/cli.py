"""The command-line trainer (``python -m ipadapter.training`` from the pack's folder; see README, Training).

Loads the base checkpoint, VAE and encoders with ComfyUI's own loaders, so any checkpoint ComfyUI opens
can be trained on. Multi-GPU: start it with ``torchrun --nproc_per_node N`` (or ``accelerate launch``);
each process trains on its own samples, gradients are averaged, the first process writes the files.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


__all__ = ["build_parser", "main"]

log = logging.getLogger("ipadapter.training")


def build_parser() -> argparse.ArgumentParser:
    from .recipe import TRAIN_FAMILIES, Recipe

    p = argparse.ArgumentParser(prog="python -m ipadapter.training",
                                description="Train or fine-tune an IP-Adapter with the reference recipe.")
    p.add_argument("--checkpoint", required=True, help="SD1.5 / SDXL checkpoint (UNet, text encoder and VAE)")
    p.add_argument("--clip-vision", required=True, help="the CLIP vision encoder file (ViT-H for most families)")
    p.add_argument("--vae", help="a separate VAE file (default: the checkpoint's)")
    p.add_argument("--dataset", help="a folder of images with same-named .txt captions, or a JSON list "
                                     "[{\"image_file\": ..., \"text\": ...}]")
    p.add_argument("--image-root", help="folder the JSON list's image_file paths are relative to (default: its own)")
    p.add_argument("--family", choices=list(TRAIN_FAMILIES), default="plus")
    p.add_argument("--base", help="an existing adapter file to fine-tune (starts from exactly its weights)")
    p.add_argument("--output", default="ip-adapter-trained.safetensors", help=".safetensors or .bin")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=Recipe.learning_rate)
    p.add_argument("--weight-decay", type=float, default=Recipe.weight_decay)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resolution", type=int, default=512, help="512 for SD1.5, 1024 for SDXL")
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="write the adapter and <output>.state.pt every N steps (0: only at the end)")
    p.add_argument("--resume", help="a <output>.state.pt to continue from")
    p.add_argument("--cache-encodings", action="store_true",
                   help="keep each image's VAE posterior and image features after its first use, so later epochs "
                        "skip the frozen encoders (memory per image at 512 px: about 1.4 MiB for Plus, 0.13 MiB "
                        "for basic); for datasets that fit in memory")
    p.add_argument("--benchmark", type=int, metavar="N", default=0,
                   help="run N steps on random data (no dataset needed), print median step time and peak memory")
    return p


def load_models(args):
    """MODEL, CLIP, VAE, CLIP_VISION through ComfyUI's loaders."""
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)[:3]
    if args.vae:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(args.vae))
    if model is None or clip is None or vae is None:
        raise SystemExit(f"{args.checkpoint}: ComfyUI found no complete pipeline (UNet, text encoder, VAE) in it; "
                         "pass --vae for checkpoints without one.")
    return model, clip, vae, comfy.clip_vision.load(args.clip_vision)


def main(argv: list[str] | None = None) -> int:
    from .bench import feature_shape, measure, random_inputs, trainer_step
    from .data import load_dataset
    from .distributed import join_process_group
    from .run import train
    from .trainer import TrainSettings, Trainer, new_adapter

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank, world = join_process_group()
    model, clip, vae, clip_vision = load_models(args)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                             weight_decay=args.weight_decay, seed=args.seed + rank, resolution=args.resolution,
                             cache_encodings=args.cache_encodings)
    if args.benchmark:
        adapter, output = new_adapter(model, clip_vision, args.family, seed=args.seed)
        trainer = Trainer(model, clip, vae, clip_vision, adapter, output, settings)
        with trainer.session():
            inputs = random_inputs(trainer, args.batch_size, args.resolution, feature_shape(clip_vision, output))
            result = measure(trainer_step(trainer, inputs), args.benchmark, trainer.device)
        print(f"benchmark {args.family} at {args.resolution}px, batch {args.batch_size}: {result.describe()}")
        return 0
    if not args.dataset:
        raise SystemExit("--dataset is required (a folder of images + .txt captions, or a JSON list)")
    dataset = load_dataset(args.dataset, args.image_root)
    log.info("dataset: %d samples (%d skipped)", len(dataset), len(dataset.skipped))
    base = None
    if args.base:
        from ..adapter import load_adapter

        base = load_adapter(args.base)
    # Only the first process writes files; the others train and contribute gradients.
    output = Path(args.output) if rank == 0 else None

    def report(step: int, loss: float) -> None:
        if rank == 0 and (step % 50 == 0 or step == args.steps):
            log.info("step %d/%d  loss %.4f", step, args.steps, loss)

    result = train(model, clip, vae, clip_vision, dataset, settings, family=args.family, base=base, output=output,
                   resume=args.resume, checkpoint_every=args.checkpoint_every if rank == 0 else 0, on_step=report)
    if rank == 0:
        log.info("saved %s", result.path)
    return 0


if __name__ == "__main__":  # pragma: no cover - started through __main__.py
    sys.exit(main())
