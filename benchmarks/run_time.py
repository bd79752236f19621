"""Where the time of ``ppfer-jax run`` goes: wall time from an empty workdir and compilation cache, and per stage
its compiles, training steps, evaluation passes, data (rendering, anonymised splits), loads and checkpoints.

    python benchmarks/run_time.py --workdir /tmp/rt                      # run the default config, then tabulate
    python benchmarks/run_time.py --workdir /tmp/rt --jobs 1             # one stage after another
    python benchmarks/run_time.py --workdir /tmp/rt --checkout OLD_TREE  # the same for another checkout (reference)
    python benchmarks/run_time.py --workdir /tmp/rt --tabulate           # only the table of a finished workdir

A run is ``ppfer-jax run`` in a subprocess with its own empty ``JAX_COMPILATION_CACHE_DIR``; ``--checkout`` puts
another source tree first on ``PYTHONPATH`` (e.g. ``git worktree add /tmp/old HEAD~1``), so a change and the
commit before it are timed on the same machine in the same session. The table reads each stage's ``timing.json``
(``ppfer_jax/timing.py``); a checkout that writes none gets the stage totals of ``timings.json`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

KINDS = ("compile", "steps", "evaluate", "data", "load", "checkpoint")


def run(workdir: Path, jobs: int | None, checkout: Path | None, overrides: list[str]) -> float:
    """Wall seconds of one ``ppfer-jax run`` from an empty workdir and compilation cache."""
    shutil.rmtree(workdir, ignore_errors=True)
    cache = workdir.with_name(workdir.name + ".xla_cache")
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout.resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "ppfer_jax.cli", "run", "--workdir", str(workdir), *overrides]
    if jobs is not None:
        command += ["--jobs", str(jobs)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=checkout or Path.cwd())
    return time.perf_counter() - start


def table(workdir: Path) -> str:
    """A markdown table of every stage's time by kind, in the order the stages finished."""
    totals = json.loads((workdir / "timings.json").read_text())
    rows, reused = [], {}
    header = "| stage | process | wall s | compile s (programs, cached) | steps | s / step | " + \
             " | ".join(f"{k} s" for k in KINDS[2:]) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, seconds in totals.items():
        path = workdir / name / "timing.json"
        if not path.exists():
            rows.append((float("inf"), f"| {name} | | {seconds:.1f} |" + " |" * 8))
            continue
        timing = json.loads(path.read_text())
        kinds, compiles = timing["seconds"], timing["compiles"]
        cached = sum(c["cached"] for c in compiles)
        if cached:
            reused[name] = Counter(c["name"] for c in compiles if c["cached"])
        steps = kinds.get("steps", 0.0)
        done = workdir / name / "DONE.json"  # the steps run (a plateau stops early); the evaluation has none
        count = json.loads(done.read_text())["step"] if done.exists() else None
        cells = [name, timing["process"], f"{timing['wall_s']:.1f}",
                 f"{kinds.get('compile', 0.0):.1f} ({len(compiles)}, {cached})", str(count or "-"),
                 f"{1000 * steps / count:.0f} ms" if count else "-"] + [f"{kinds.get(k, 0.0):.1f}" for k in KINDS[2:]]
        rows.append((path.stat().st_mtime, "| " + " | ".join(cells) + " |"))
    lines += [line for _, line in sorted(rows)]
    lines.append("")
    lines.append("programs a stage compiled that an earlier stage had compiled (the persistent compilation cache gave "
                 "them back): " + ("; ".join(f"{name}: " + ", ".join(f"{program} x{count}" if count > 1 else program
                                                                     for program, count in sorted(programs.items()))
                                             for name, programs in reused.items()) or "none"))
    return "\n".join(lines)


def processor() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=None, help="ppfer-jax run --jobs (default: its own default)")
    parser.add_argument("--checkout", type=Path, default=None, help="run this source tree instead of this one")
    parser.add_argument("--tabulate", action="store_true", help="only tabulate a finished workdir")
    parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE overrides, after --")
    args = parser.parse_args()
    if not args.tabulate:
        wall = run(args.workdir, args.jobs, args.checkout, args.overrides)
        print(f"\nppfer-jax run{'' if args.jobs is None else f' --jobs {args.jobs}'}"
              f"{f' ({args.checkout})' if args.checkout else ''}: {wall:.0f} s wall "
              f"({round(wall) // 60} min {round(wall) % 60} s) on {processor()}, {os.cpu_count()} CPUs")
    print(table(args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
