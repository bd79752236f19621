"""Where a ResNet-50 and an R3D-18 training step spend their time on CPU, in JAX and in PyTorch, by component.

    python benchmarks/cpu_profile.py [--steps 3] [--patches] [--append benchmarks/RESULTS.md]

JAX: the jitted step (``benchmarks/jax_vs_torch.py``'s) is traced with ``jax.profiler``; each XLA thunk's time
is attributed, through the compiled HLO's ``op_name`` metadata, to the model scope it comes from (forward, or
``transpose`` = backward) and sorted into components. PyTorch: ``torch.profiler`` over the same number of steps,
its aten ops sorted into the same components. Times are per step, summed over threads (both runtimes run ops
on 2 threads here, so a component's share is what matters). ``--patches`` profiles ``layers.conv``'s
patches-times-matrix lowering of small-map convs (``layers.PATCHES_ON_CPU``, off by default).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jax_vs_torch import CASES, environment, jax_step, torch_step  # noqa: E402

from ppfer_jax.models import layers  # noqa: E402

MODELS = {"resnet50": "resnet50 (64 px, b=8)", "r3d_18": "r3d_18 (8x32x32, b=4)"}
COMPONENTS = ("stem conv", "strided convs", "1x1 convs", "other convs", "BatchNorm", "max-pool",
              "residual add + ReLU", "head + loss", "Adam update", "other")
STRIDED = re.compile(r"stage[234]_block0/(downsample_conv|conv1|conv2)/")


def _conv_kind(path: str, model: str) -> str:
    if "stem_conv/" in path:
        return "stem conv"
    if "downsample_conv/" in path or (STRIDED.search(path) and ("conv2/" in path if model == "resnet50"
                                                                else "conv1/" in path)):
        return "strided convs"
    if model == "resnet50" and re.search(r"/conv[13]/", path):
        return "1x1 convs"
    return "other convs"


def jax_component(op_name: str, model: str) -> str:
    """The component an HLO op belongs to, from its ``op_name`` metadata (flax module scopes, then the primitive);
    ops outside the model are the loss (under ``jvp``/``transpose``) or the Adam update."""
    scope = re.search(r"\((?:ResNet|R3D18)\)\)?/(.*)", op_name)
    if scope is None:
        return "head + loss" if ("jvp(" in op_name or "transpose(" in op_name) else "Adam update"
    *modules, primitive = scope.group(1).split("/")
    path = "/" + "/".join(modules) + "/"
    if any(m.endswith("_conv") or re.fullmatch(r"conv\d", m) for m in modules):
        return _conv_kind(path, model)
    if any(re.fullmatch(r"\w*bn\d?", m) for m in modules):
        return "BatchNorm"
    if primitive.startswith(("reduce_window", "select_and_scatter")):
        return "max-pool"
    if (modules and modules[0] == "head") or (not modules and primitive.startswith(("reduce_sum", "div"))):
        return "head + loss"
    return "residual add + ReLU"


def profile_jax(model: str, steps: int) -> dict[str, float]:
    """Milliseconds per step by component, summed over XLA's threads; ``wall`` is the traced steps' wall time."""
    _, (spec, fields), shape, loss_kind = CASES[MODELS[model]]
    run, step, state = jax_step(spec, fields, shape, loss_kind, with_step=True)
    hlo = step.lower(*state[:3]).compile().as_text()
    op_names = dict(re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo))
    directory = tempfile.mkdtemp()
    with jax.profiler.trace(directory):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - start) / steps
    path = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0]
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the threads that run the thunks
                continue
            for event in line.events:
                if event.name in op_names:
                    totals[jax_component(op_names[event.name], model)] += event.duration_ns
                elif not event.name.startswith("ThunkExecutor"):
                    totals["other"] += event.duration_ns
    return {**{name: totals[name] / 1e6 / steps for name in COMPONENTS}, "wall": 1e3 * wall}


TORCH_KEYS = [("conv", "convs (all)"), ("batch_norm", "BatchNorm"), ("batchnorm", "BatchNorm"),
              ("max_pool", "max-pool"), ("maxpool", "max-pool"), ("addmm", "head + loss"), ("linear", "head + loss"),
              ("cross_entropy", "head + loss"), ("log_softmax", "head + loss"), ("nll_loss", "head + loss"),
              ("mean", "head + loss"), ("relu", "residual add + ReLU"), ("threshold", "residual add + ReLU"),
              ("add", "residual add + ReLU")]


def torch_component(event) -> str:
    """The component of a profiled op: the optimizer step's, else that of the nearest enclosing op (or autograd
    backward node) whose name says what it is."""
    names = []
    while event is not None:
        names.append(event.name.lower())
        event = event.cpu_parent
    if any(name.startswith("optimizer.") for name in names):
        return "Adam update"
    for name in names:
        for key, component in TORCH_KEYS:
            if key in name:
                return component
    return "other"


def profile_torch(model: str, steps: int) -> dict[str, float]:
    """Milliseconds per step by component: every profiled op's self CPU time."""
    make, _, shape, loss_kind = CASES[MODELS[model]]
    run = torch_step(make, shape, loss_kind, False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - start) / steps
    totals = collections.Counter()
    for event in prof.events():
        totals[torch_component(event)] += event.self_cpu_time_total / 1e3
    return {**{name: value / steps for name, value in totals.items()}, "wall": 1e3 * wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--patches", action="store_true", help="layers.PATCHES_ON_CPU: small-map convs as matmuls")
    parser.add_argument("--append", type=Path, default=None)
    args = parser.parse_args(argv)
    layers.PATCHES_ON_CPU = args.patches
    lines = []
    for model in MODELS:
        jax_ms, torch_ms = profile_jax(model, args.steps), profile_torch(model, args.steps)
        torch_convs = torch_ms.get("convs (all)", 0.0)
        lines += [f"\n**{MODELS[model]}** (ms per step, summed over threads)\n", "| component | JAX | PyTorch |",
                  "|---|---|---|"]
        jax_convs = sum(jax_ms[c] for c in COMPONENTS if c.endswith("convs") or c == "stem conv")
        for component in COMPONENTS:
            torch_value = torch_ms.get(component)
            lines.append(f"| {component} | {jax_ms[component]:.1f} | "
                         f"{'(in all convs)' if 'conv' in component else f'{torch_value or 0.0:.1f}'} |")
        lines.append(f"| all convs | {jax_convs:.1f} | {torch_convs:.1f} |")
        jax_total = sum(v for k, v in jax_ms.items() if k != "wall")
        torch_total = sum(v for k, v in torch_ms.items() if k != "wall")
        lines.append(f"| total (summed over threads) | {jax_total:.1f} | {torch_total:.1f} |")
        lines.append(f"| step wall time, profiler on | {jax_ms['wall']:.1f} | {torch_ms['wall']:.1f} |")
    title = (f"\n### CPU profile of one training step by component — {datetime.date.today()}; "
             f"{'layers.PATCHES_ON_CPU (patches x matrix on CPU)' if args.patches else 'XLA native convolution'}; "
             f"{environment()}; {args.steps} steps\n")
    text = title + "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
