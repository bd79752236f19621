"""A rehearsal of the README's real-data commands at CREMA-D's real shape, on fake data (no real data here).

    python benchmarks/cremad_rehearsal.py --root /tmp/ppfer_rehearsal        # write, prepare, run
    python benchmarks/cremad_rehearsal.py --root /tmp/ppfer_rehearsal --actors 10 --no_run  # a tenth

It makes ``ROOT/home`` the user's $HOME and writes there:

* ``~/CREMA-D/VideoFlash``: CREMA-D's layout and names -- 91 actors 1001-1091, the 12 sentences, sentence
  IEO at levels LO MD HI for the five emotions and XX for neutral, every other sentence at XX (82 names an
  actor, 7,462 in all); 19 names dropped at random leave 7,443 files, one of them corrupt (truncated), so
  7,442 are usable, the paper's count. Each file is a real FLV (FFmpeg's FLV1 codec, 480x360, 30 fps,
  60-90 frames = 2-3 s) of a drifting face-like sprite on a gradient, so every file decodes differently;
* ``~/DFEW``: a small fake DFEW release (the ``wild`` set that ``configs/cremad.py`` reads).

then runs, in a shell as a user would, the README's two ``prepare`` commands as written and times them
(files/s, wall time, disk, peak size of the clip cache), and ``ppfer-jax run --config configs/cremad.py``
with model sizes and steps overridden small enough for a 2-core CPU (printed; every stage still reads the
prepared splits at their real size and 16x112x112 shape). Numbers go to ``ROOT/rehearsal.json``. Run it
under ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
PAPER_CLIPS = 7442
README_PREPARE_CREMAD = "ppfer-jax prepare cremad --manual_dir ~/CREMA-D --data_dir ~/tensorflow_datasets"
README_PREPARE_DFEW = ("ppfer-jax prepare dfew --manual_dir ~/DFEW --data_dir ~/tensorflow_datasets --fold 1 "
                       "--one_random_frame")
HEIGHT, WIDTH, FPS = 360, 480, 30


def cremad_names() -> list[str]:
    """Every file name of CREMA-D's design (7,462): IEO at three levels (neutral: XX), the rest at XX."""
    names = []
    for actor, sentence, emotion in itertools.product(range(1001, 1092), SENTENCES, EMOTIONS):
        levels = ("LO", "MD", "HI") if sentence == "IEO" and emotion != "NEU" else ("XX",)
        names += [f"{actor}_{sentence}_{emotion}_{level}" for level in levels]
    return names


def write_flv(job: tuple[str, int]) -> int:
    """One fake clip: a face-like sprite drifting over a gradient, its mouth opening and closing; returns bytes.

    Frames are drawn straight in the encoder's YUV 4:2:0 planes (an RGB conversion per frame would triple
    the time it takes to write the tree).
    """
    import av

    path, seed = job
    rng = np.random.default_rng(seed)
    luma = np.linspace(*rng.integers(40, 220, 2), HEIGHT).astype(np.uint8)[:, None]
    background = np.concatenate([np.broadcast_to(luma, (HEIGHT, WIDTH)),  # Y, then U and V, each at half size
                                 np.full((HEIGHT // 4, WIDTH), rng.integers(90, 170), np.uint8),
                                 np.full((HEIGHT // 4, WIDTH), rng.integers(90, 170), np.uint8)])
    y, x = np.mgrid[:220, :170]
    face = ((y - 110) / 105) ** 2 + ((x - 85) / 80) ** 2 <= 1
    eyes = (((y - 85) / 9) ** 2 + ((x - 55) / 14) ** 2 <= 1) | (((y - 85) / 9) ** 2 + ((x - 115) / 14) ** 2 <= 1)
    sprite = np.where(eyes, 30, rng.integers(120, 220)).astype(np.uint8)
    skin_u, skin_v = rng.integers(100, 125), rng.integers(140, 170)
    frames = int(rng.integers(60, 91))
    phase, speed = rng.uniform(0, 6.3, 2), rng.uniform(0.05, 0.15)
    with av.open(path, "w") as output:
        stream = output.add_stream("flv", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for t in range(frames):
            planes = background.copy()
            top = int(70 + 20 * np.sin(speed * t + phase[0])) // 2 * 2
            left = int(155 + 30 * np.sin(0.7 * speed * t + phase[1])) // 2 * 2
            region = planes[top:top + 220, left:left + 170]
            region[face] = sprite[face]
            region[150:150 + int(4 + 10 * abs(np.sin(0.3 * t + phase[0]))), 60:110] = 40  # the mouth
            chroma = planes[HEIGHT:].reshape(2, HEIGHT // 2, WIDTH // 2)  # U and V planes, rows of half width
            for plane, value in zip(chroma, (skin_u, skin_v)):
                plane[top // 2:top // 2 + 110, left // 2:left // 2 + 85][face[::2, ::2]] = value
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return os.path.getsize(path)


def write_cremad(home: Path, actors: int, workers: int) -> dict:
    videos = home / "CREMA-D" / "VideoFlash"
    if videos.exists():
        shutil.rmtree(videos)
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = cremad_names()
    names = sorted(rng.choice(names, size=PAPER_CLIPS + 1, replace=False).tolist())  # 7,442 good + 1 corrupt
    names = [name for name in names if int(name[:4]) < 1001 + actors]
    jobs = [(str(videos / f"{name}.flv"), seed) for seed, name in enumerate(names)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        sizes = pool.map(write_flv, jobs, chunksize=16)
    corrupt = Path(jobs[len(jobs) // 2][0])
    whole = corrupt.read_bytes()
    corrupt.write_bytes(whole[: len(whole) // 3])  # cut off mid-stream, as an interrupted copy leaves it
    return {"files": len(jobs), "corrupt": corrupt.name, "write_s": time.perf_counter() - start,
            "mean_file_kB": sum(sizes) / len(sizes) / 1e3, "tree_MB": sum(sizes) / 1e6}


def write_dfew(home: Path, train: int = 280, test: int = 70) -> None:
    """A small fake DFEW release: frame directories of 224x224 JPEGs, the fold-1 split files."""
    from PIL import Image

    root = home / "DFEW"
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(1)
    for k in range(1, train + test + 1):
        folder = root / "Clip" / "clip_224x224" / f"{k:05d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(int(rng.integers(16, 40))):
            frame = np.clip(colour + rng.normal(0, 20, (224, 224, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(frame).save(folder / f"{i + 1}.jpg", quality=85)
    labels = root / "EmoLabel_DataSplit"
    for split, ks in (("train", range(1, train + 1)), ("test", range(train + 1, train + test + 1))):
        (labels / f"{split}(single-labeled)").mkdir(parents=True)
        rows = "".join(f"{k},{rng.integers(1, 8)}\n" for k in ks)
        (labels / f"{split}(single-labeled)" / "set_1.csv").write_text("video_name,label\n" + rows)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def shell(command: str, home: Path, log: Path) -> float:
    """Runs ``command`` in bash with HOME=home (so ~ is the fake home), output to ``log``; returns wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(["bash", "-c", command], env={**os.environ, "HOME": str(home)}, stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def prepare_cremad(home: Path, root: Path, test_clips: int | None) -> dict:
    """The README's command as written (plus ``--test_clips`` for a subset), timed; a thread records the clip
    cache's peak size."""
    data_dir = home / "tensorflow_datasets"
    peak, done = [0], threading.Event()

    def watch():
        while not done.wait(15):
            peak[0] = max(peak[0], directory_bytes(data_dir / "downloads"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = README_PREPARE_CREMAD + ("" if test_clips is None else f" --test_clips {test_clips}")
    seconds = shell(command, home, root / "prepare_cremad.log")
    done.set()
    watcher.join()
    summary = json.loads(next((data_dir / "cremad").glob("*/*/prepare_summary.json")).read_text())
    listed = summary["listed"]
    return {"command": command, "wall_s": seconds, "files_per_s": listed / seconds,
            "stored_MB": directory_bytes(data_dir / "cremad") / 1e6, "cache_peak_MB": peak[0] / 1e6,
            "splits": summary["splits"], "skipped": summary["skipped"],
            "actors": {split: len(per) for split, per in summary["per_actor"].items()},
            "test_clips_per_actor": [min(summary["per_actor"]["test"].values()),
                                     max(summary["per_actor"]["test"].values())],
            "per_class": summary["per_class"]}


def small_run_overrides() -> list[str]:
    """configs/cremad.py with tiny networks and 2 steps of every training stage: CPU-sized, same data."""
    from ppfer_jax.config import load_config

    overrides = ["dtype=float32", "rng_impl=rbg", "train.loader_workers=0", "train.eval_batch_size=32",
                 "model.compensator.size=tiny", "model.compensator.patch_size=14", "model.compensator.remat=False",
                 "model.utility.width=4"]
    for band in ("enhancer_low", "enhancer_high"):
        overrides += [f"model.{band}.features=4", f"model.{band}.depth=2"]
    for classifier in ("identity_controller", "validator", "expression_controller"):
        overrides += [f"model.{classifier}.name=resnet18", f"model.{classifier}.width=4"]
    config = load_config("configs/cremad.py")
    for name, section in config.train.items():
        if hasattr(section, "keys") and "steps" in section:
            overrides += [f"train.{name}.steps=2", f"train.{name}.batch_size=2"]
            if section.get("eval_every") is not None:
                overrides.append(f"train.{name}.eval_every=2")
    if "robust" in config.privacy:
        overrides.append("privacy.robust.adversaries=1")
    return ["--config." + item for item in overrides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ppfer_rehearsal"))
    parser.add_argument("--actors", type=int, default=91,
                        help="write only the first N actors' files (and prepare with a test split of the same "
                             "share, --test_clips); default all 91, the README's command as written")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the fake tree")
    parser.add_argument("--keep_tree", action="store_true", help="reuse ROOT/home's fake trees if written")
    parser.add_argument("--no_run", action="store_true", help="stop after the two prepare commands")
    args = parser.parse_args()
    home = args.root / "home"
    home.mkdir(parents=True, exist_ok=True)
    results_path = args.root / "rehearsal.json"
    results = json.loads(results_path.read_text()) if results_path.exists() and args.keep_tree else {}
    if not (args.keep_tree and (home / "CREMA-D").exists()):
        results["tree"] = write_cremad(home, args.actors, args.workers)
        write_dfew(home)
    print("tree:", results["tree"], flush=True)
    shutil.rmtree(home / "tensorflow_datasets", ignore_errors=True)
    test_clips = round(2232 * (results["tree"]["files"] - 1) / PAPER_CLIPS)
    results["prepare_cremad"] = prepare_cremad(home, args.root, None if args.actors == 91 else test_clips)
    print("prepare cremad:", {k: v for k, v in results["prepare_cremad"].items() if k != "per_class"}, flush=True)
    results["prepare_dfew"] = {"command": README_PREPARE_DFEW,
                               "wall_s": shell(README_PREPARE_DFEW, home, args.root / "prepare_dfew.log")}
    results_path.write_text(json.dumps(results, indent=1))
    if args.no_run:
        return
    overrides = small_run_overrides()
    workdir = args.root / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    command = f"ppfer-jax run --config configs/cremad.py --workdir {workdir} " + " ".join(overrides)
    results["run"] = {"command": command, "wall_s": shell(command, home, args.root / "run.log"),
                      "stage_s": json.loads((workdir / "timings.json").read_text())}
    report = json.loads((workdir / "report.json").read_text())
    results["run"]["results"] = {k: v for k, v in report["results"].items()
                                 if k in ("num_test_clips", "num_identities", "table1", "ssim", "psnr_db")}
    results_path.write_text(json.dumps(results, indent=1))
    print("run:", json.dumps(results["run"], indent=1))


if __name__ == "__main__":
    main()
