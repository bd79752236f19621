"""Clips per second of the real-data loader (prepared TFDS split -> grain -> random resized crop -> batches).

    python benchmarks/loader_throughput.py                      # a fake CREMA-D set, 112 px, 16 frames
    python benchmarks/loader_throughput.py --data_dir ~/tensorflow_datasets --name cremad/112
    python benchmarks/loader_throughput.py --step_ms 120        # does it keep up with a 120 ms train step?

(after ``pip install .``, or with ``PYTHONPATH=.`` in a checkout). Without ``--name`` it writes a fake
CREMA-D tree (real FLV files, textured moving frames) to a temp dir, times ``prepare`` on it, then reads
the prepared train split. For each worker count it starts a fresh iterator, discards the first batches
(worker start-up) and reports the median rate of ``--repeats`` timed runs of ``--batches`` batches.

Measured on a shared 2-core x86 VM (16x112x112 clips, batch 16, median of 5): 0 workers 262 clips/s
plain, 135 with the random resized crop; 1 worker 200 / 86; 2 workers 138 / 83. With 2 cores the workers
compete with the main process, and every batch (9.6 MB) crosses a process boundary, so workers do not
pay off here; one core does about 130-260 clips/s, which is the per-worker figure to scale by on a host
with more cores. Against the train step (estimates, not measured here): F_u alone (R3D-18, about 41
GMAC per clip forward, so about 250 GFLOP per training clip) at a plausible 35% of an H100's bf16 peak
would take about 1,400 clips/s, which needs about 10 workers; the PPFER stages that run the U-ViT-H/2
compensator on every frame on the fly (tens of TFLOP per clip) take a few clips/s, which one worker
covers with a wide margin. Pass ``--step_ms`` with a measured step time to compare directly.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags

from data_pipelines import cremad
from data_pipelines.loader import PreparedSplit, RandomResizedCrop, make_iterator


def write_fake_cremad(root: Path, num_clips: int, num_frames: int = 48, height: int = 180, width: int = 240) -> None:
    """``num_clips`` FLV files named as CREMA-D's, showing a textured pattern that drifts, plus sensor noise."""
    import av

    videos = root / cremad.VIDEO_DIR
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = itertools.product(range(cremad.FIRST_ACTOR, cremad.FIRST_ACTOR + cremad.NUM_ACTORS),
                              ("DFA", "IEO", "ITH", "TIE"), cremad.EMOTION_CODES)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    for actor, sentence, emotion in itertools.islice(names, num_clips):
        phase = rng.uniform(0, 6, size=3)
        with av.open(str(videos / f"{actor}_{sentence}_{emotion}_XX.flv"), "w") as output:
            stream = output.add_stream("flv", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(num_frames):
                channels = [128 + 90 * np.sin(x / (9 + 3 * c) + y / 17 + phase[c] + t / 8) for c in range(3)]
                frame = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
                image = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(image):
                    output.mux(packet)
            for packet in stream.encode():
                output.mux(packet)


def clips_per_second(source, *, batch_size: int, workers: int, batches: int, repeats: int, augment: bool) -> float:
    iterator = make_iterator(source, batch_size=batch_size, seed=0, shard_index=0, shard_count=1,
                             worker_count=workers, transform=RandomResizedCrop() if augment else None)
    for _ in range(3):  # worker start-up and the first reads
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="a data_dir holding a prepared set")
    parser.add_argument("--name", default=None, help="the prepared set, e.g. cremad/112 (default: build a fake one)")
    parser.add_argument("--fake_clips", type=int, default=96, help="clips in the fake set")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=16, help="per process (configs/cremad.py F_u: 16)")
    parser.add_argument("--batches", type=int, default=10, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step_ms", type=float, default=None, help="a train step's time, to compare with")
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

    with tempfile.TemporaryDirectory() as scratch:
        data_dir, name = args.data_dir, args.name
        if name is None:
            manual, data_dir = Path(scratch) / "manual", Path(scratch) / "data"
            write_fake_cremad(manual, args.fake_clips)
            start = time.perf_counter()
            summary = cremad.prepare(manual, data_dir, image_size=args.image_size, test_clips=args.fake_clips // 4,
                                     workers=min(2, os.cpu_count() or 1), progress=False)
            took = time.perf_counter() - start
            name = f"cremad/{summary['config']}"
            stored = sum(f.stat().st_size for f in (data_dir / name).rglob("*.array_record*"))
            print(f"prepare: {args.fake_clips} fake 48-frame 240x180 FLV clips in {took:.1f} s "
                  f"({args.fake_clips / took:.1f} clips/s, decode + crop + resize + TFDS write, 2 processes); "
                  f"stored {stored / args.fake_clips / 1e3:.0f} kB per clip")
        source = PreparedSplit(PreparedSplit.open(data_dir, name, "train").directory, "train",
                               fields=("video", "identity", "expression"))
        shape = source[0]["video"].shape
        print(f"{name} train: {len(source)} clips of {shape} uint8, batch {args.batch_size}")
        rates = {}
        for workers in args.workers:
            for augment in (False, True):
                rate = clips_per_second(source, batch_size=args.batch_size, workers=workers, batches=args.batches,
                                        repeats=args.repeats, augment=augment)
                rates[workers, augment] = rate
                print(f"  workers={workers} {'random resized crop' if augment else 'no augmentation    '}: "
                      f"{rate:7.1f} clips/s ({rate * shape[0]:.0f} frames/s)")
    if args.step_ms:
        need = args.batch_size / (args.step_ms / 1000)
        best = max(rates.values())
        print(f"train step of {args.step_ms:g} ms at batch {args.batch_size} consumes {need:.0f} clips/s: the best "
              f"loader setting gives {best / need:.1f}x that")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
