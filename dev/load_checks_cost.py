"""What the load-time checks of a checkpoint cost (README, Reliability): the NaN/Inf and dtype check of every
tensor (files.check_tensors) on full-size fp16 synthetic adapters, and the shape check (detect.check_shapes).

    .venv/bin/python dev/load_checks_cost.py [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import runtime

runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-checks-")))
runtime.init_nodes(load_pack=True)

import torch  # noqa: E402

from harness import adapter_factory  # noqa: E402
from ipadapter_next.ipadapter import detect, files  # noqa: E402

FAMILIES = ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h")


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds}")
    for family in FAMILIES:
        sections = adapter_factory.adapter_state_dict(family, scale="full", dtype=torch.float16)
        tensors = {f"{s}.{k}": t for s, d in sections.items() for k, t in d.items()}
        values = sum(t.numel() for t in tensors.values())
        spec = detect.detect(sections, source=family)
        finite = best_of(args.rounds, lambda: files.check_tensors(tensors, family))
        shapes = best_of(args.rounds, lambda: detect.check_shapes(spec, sections, family))
        print(f"{family:30s} {values / 1e6:7.1f} M values   values {finite * 1000:6.0f} ms   shapes {shapes * 1000:5.1f} ms")
        del sections, tensors


if __name__ == "__main__":
    main()
