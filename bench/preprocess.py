"""Preprocessing a batch of photos for a model: its processor alone against blip2.fitting first, side by side.

    .venv/bin/python -m bench.preprocess                 # shapes-blip2 (64 px), 16 photos of 300-640 px
    .venv/bin/python -m bench.preprocess --model tiny-opt --batch 32

Times the model's image processor on the same photos as given, then fitted by blip2/fitting.py on its
pool of threads and on one thread, alternating for --rounds rounds; prints milliseconds per image for
each (the median over the rounds) and the ratios, and checks that the pixel values are the same.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from bench.harness import photos
from blip2 import fitting
from blip2.loading import load_model


def main() -> None:
    args = _arguments()
    images = photos(args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as scratch:
        processor = load_model(args.model, data_dir=Path(scratch)).processor.image_processor
    as_given = processor(images, return_tensors="pt")["pixel_values"]
    if not torch.equal(processor(fitting.fitted(processor, images), return_tensors="pt")["pixel_values"], as_given):
        raise SystemExit("fitted images gave other pixel values")
    paths: dict[str, Callable[[], object]] = {
        "the processor alone": lambda: processor(images, return_tensors="pt"),
        "fitted first, pool of threads": lambda: processor(fitting.fitted(processor, images), return_tensors="pt"),
        "fitted first, one thread": lambda: processor(_one_thread(processor, images), return_tensors="pt"),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):  # alternating: the machine's speed drifts
        for name, run in paths.items():
            times[name].append(_ms_per_image(run, len(images)))
    baseline = statistics.median(times["the processor alone"])
    print(f"model {args.model}, {args.batch} photos of 300-640 px, median of {args.rounds} rounds; same pixel values")
    for name, ms in times.items():
        median = statistics.median(ms)
        print(f"{name:<32} {median:6.2f} ms an image   {baseline / median:5.2f}x")


def _one_thread(processor: object, images: list[Image.Image]) -> list[Image.Image]:
    target = fitting.target(processor)
    if target is None:
        return images
    width, height, resample = target
    return [i.resize((width, height), resample) if i.mode == "RGB" else i for i in images]


def _ms_per_image(run: Callable[[], object], images: int, at_least_s: float = 0.5) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < at_least_s or not done:
        run()
        done += images
    return elapsed * 1000 / done


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-blip2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main()
