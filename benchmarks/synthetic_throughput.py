"""Clips per second of the synthetic source, single process: is the renderer fast enough to feed training?

    python benchmarks/synthetic_throughput.py --image-size 32 --frames 8 --clips 200
    python benchmarks/synthetic_throughput.py --image-size 112 --frames 16 --clips 30

(after ``pip install .``, or with ``PYTHONPATH=.`` in a checkout).

Renders each person once first (their detail maps are cached, as in a long run),
then times ``--repeats`` passes over ``--clips`` clips and reports the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from data_pipelines.synthetic import SyntheticFaces, SyntheticSpec


def clips_per_second(source: SyntheticFaces, num_clips: int, repeats: int) -> float:
    """Median rate over ``repeats`` timed passes, after one warm-up clip per person."""
    per_person = source.spec.clips_per_identity(source.split)
    for index in range(0, len(source), per_person):
        source[index]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(num_clips):
            source[index % len(source)]
        rates.append(num_clips / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clips", type=int, default=200, help="clips per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    source = SyntheticFaces(SyntheticSpec(image_size=args.image_size, num_frames=args.frames), "train")
    rate = clips_per_second(source, args.clips, args.repeats)
    print(f"synthetic {args.frames}x{args.image_size}x{args.image_size}: {rate:.1f} clips/s "
          f"({rate * args.frames:.0f} frames/s), single process, median of {args.repeats} x {args.clips} clips")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
