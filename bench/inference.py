"""Memory and speed of inference per quantization, and batched against one-at-a-time.

    .venv/bin/python bench/inference.py                       # tiny-opt on this machine's device
    .venv/bin/python bench/inference.py --model blip2-opt-2.7b --device cuda --batch 16

Prints one row per quantization with its memory footprint and captioning throughput, and the
ratios against the unquantized baseline measured in the same run. On the tiny checkpoints the
numbers say little about real models (their layers are too small for int8/int4 kernels to pay);
run it on a GPU with a real checkpoint for figures that matter.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from blip2.caption import caption
from blip2.decoding import DecodingOptions
from blip2.loading import LoadedModel, LoadOptions, load_model


def main() -> None:
    args = _arguments()
    images = _images(args.batch)
    decoding = DecodingOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens, num_beams=1)
    rows = [_measure(args, quantize, images, decoding) for quantize in args.quantize.split(",")]
    _print(rows, args)


def _measure(
    args: argparse.Namespace, quantize: str, images: list[Image.Image], decoding: DecodingOptions
) -> tuple[str, int, float, float, LoadedModel]:
    """Memory, and images per second batched and one at a time, for one quantization."""
    lm = load_model(args.model, data_dir=args.data_dir, options=LoadOptions(device=args.device, quantize=quantize))
    batched = _seconds(lambda: caption(lm, images, decoding=decoding), args.repeats)
    alone = _seconds(lambda: [caption(lm, [image], decoding=decoding) for image in images], args.repeats)
    return quantize, lm.memory_footprint_bytes, len(images) / batched, len(images) / alone, lm


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-opt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantize", default="none,int8,int4", help="comma-separated; the first is the baseline")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (fixed, for fair timing)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    return parser.parse_args()


def _images(n: int) -> list[Image.Image]:
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")]
    return [photos[i % len(photos)] for i in range(n)]


def _seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: first-call allocations and kernel selection
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _print(rows: list[tuple[str, int, float, float, LoadedModel]], args: argparse.Namespace) -> None:
    base_memory, base_speed = rows[0][1], rows[0][2]
    device = rows[0][4].device
    print(f"model {args.model} on {device}, batch {args.batch}, {args.tokens} new tokens, median of {args.repeats}")
    print(f"{'quantize':<10} {'memory MB':>10} {'vs base':>8} {'img/s batched':>14} {'vs base':>8} "
          f"{'img/s alone':>12} {'batch gain':>11}")  # fmt: skip
    for quantize, memory, batched, alone, _ in rows:
        print(f"{quantize:<10} {memory / 1e6:>10.2f} {memory / base_memory:>8.2f} {batched:>14.1f} "
              f"{batched / base_speed:>8.2f} {alone:>12.1f} {batched / alone:>10.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
