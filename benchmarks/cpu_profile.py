"""Where a training step spends its time on CPU, in JAX and in PyTorch: by component (ResNets, R3Ds) and by op.

    python benchmarks/cpu_profile.py [--steps 3] [--native-convs] [--models resnet18_w8 r3d_18_w8] [--kinds 8]
                                     [--append benchmarks/RESULTS.md]

JAX: the jitted step (``benchmarks/jax_vs_torch.py``'s) is traced with ``jax.profiler``; each XLA thunk's time
is attributed, through the compiled HLO's ``op_name`` metadata, to the model scope it comes from (forward, or
``transpose`` = backward) and sorted into components. PyTorch: ``torch.profiler`` over the same number of steps,
its aten ops sorted into the same components. Times are per step, summed over threads (both runtimes run ops
on 2 threads here, so a component's share is what matters). ``--native-convs`` turns off ``layers.conv``'s
patches-times-matrix lowering of wide small-map convs (``layers.PATCHES_ON_CPU``). ``--models`` also
takes the default config's width-8 networks; ``--kinds N`` lists the JAX step's N costliest kinds of XLA thunk.
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
from jax_vs_torch import CASES, CONVS, environment, jax_step, torch_step  # noqa: E402

from ppfer_jax.models import layers  # noqa: E402

MODELS = {"resnet50": "resnet50 (64 px, b=8)", "r3d_18": "r3d_18 (8x32x32, b=4)",
          "resnet18_w8": "resnet18 w8 (32 px, b=64)", "r3d_18_w8": "r3d_18 w8 (8x32x32, b=16)",
          "unet": "unet (f=16, 64 px, b=8)", "uvit": "uvit (dim 128, depth 6, 32 px, b=8)"}
RESNETS = ("resnet50", "r3d_18", "resnet18_w8", "r3d_18_w8")  # the models the component table applies to
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


def thunk_kind(name: str) -> str:
    """An XLA thunk's kind: its name without the instance number (``transpose_copy_fusion.31`` ->
    ``transpose_copy_fusion``), which says what XLA emitted (``ynn_fusion``: a YNNPACK convolution or dot)."""
    return re.sub(r"(\.\d+)+$", "", name)


def profile_jax(model: str, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per step by component, summed over XLA's threads (``wall``: the traced steps' wall time), and
    by XLA thunk kind."""
    _, (spec, fields), shape, loss_kind = CASES[MODELS[model]]
    run, compiled, _, _ = jax_step(spec, fields, shape, loss_kind)
    hlo = compiled.as_text()
    op_names = dict(re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo))
    directory = tempfile.mkdtemp()
    with jax.profiler.trace(directory):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - start) / steps
    path = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0]
    totals, kinds = collections.Counter(), collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the threads that run the thunks
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    kinds[thunk_kind(event.name)] += event.duration_ns
                if event.name in op_names:
                    totals[jax_component(op_names[event.name], model)] += event.duration_ns
                elif not event.name.startswith("ThunkExecutor"):
                    totals["other"] += event.duration_ns
    return ({**{name: totals[name] / 1e6 / steps for name in COMPONENTS}, "wall": 1e3 * wall},
            {kind: value / 1e6 / steps for kind, value in kinds.most_common()})


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


def profile_torch(model: str, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per step by component (every profiled op's self CPU time), and by op."""
    make, _, shape, loss_kind = CASES[MODELS[model]]
    run = torch_step(make, shape, loss_kind, False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - start) / steps
    totals, ops = collections.Counter(), collections.Counter()
    for event in prof.events():
        totals[torch_component(event)] += event.self_cpu_time_total / 1e3
        ops[event.name] += event.self_cpu_time_total / 1e3
    return ({**{name: value / steps for name, value in totals.items()}, "wall": 1e3 * wall},
            {name: value / steps for name, value in ops.most_common()})


def component_table(jax_ms: dict[str, float], torch_ms: dict[str, float]) -> list[str]:
    """Markdown rows: each component's ms per step in JAX and PyTorch (PyTorch's convs as one total)."""
    lines = ["| component | JAX | PyTorch |", "|---|---|---|"]
    for component in COMPONENTS:
        torch_value = torch_ms.get(component)
        lines.append(f"| {component} | {jax_ms[component]:.1f} | "
                     f"{'(in all convs)' if 'conv' in component else f'{torch_value or 0.0:.1f}'} |")
    jax_convs = sum(jax_ms[c] for c in COMPONENTS if c.endswith("convs") or c == "stem conv")
    lines.append(f"| all convs | {jax_convs:.1f} | {torch_ms.get('convs (all)', 0.0):.1f} |")
    jax_total = sum(v for k, v in jax_ms.items() if k != "wall")
    torch_total = sum(v for k, v in torch_ms.items() if k != "wall")
    lines.append(f"| total (summed over threads) | {jax_total:.1f} | {torch_total:.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--native-convs", action="store_true",
                        help="layers.PATCHES_ON_CPU off: XLA's own convolution for the wide small-map convs too")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=["resnet50", "r3d_18"])
    parser.add_argument("--kinds", type=int, default=0,
                        help="also list the N costliest XLA thunk kinds and PyTorch ops (U-Net, U-ViT: always, 8)")
    parser.add_argument("--append", type=Path, default=None)
    args = parser.parse_args(argv)
    layers.PATCHES_ON_CPU = not args.native_convs
    lines = []
    for model in args.models:
        (jax_ms, kinds), (torch_ms, ops) = profile_jax(model, args.steps), profile_torch(model, args.steps)
        lines.append(f"\n**{MODELS[model]}** (ms per step, summed over threads; step wall time with the profiler on: "
                     f"JAX {jax_ms['wall']:.1f}, PyTorch {torch_ms['wall']:.1f})\n")
        if model in RESNETS:
            lines += component_table(jax_ms, torch_ms)
        if args.kinds or model not in RESNETS:
            top = args.kinds or 8
            lines += ["", "JAX, by XLA thunk kind: " + ", ".join(
                f"`{kind}` {ms:.1f}" for kind, ms in list(kinds.items())[:top]) + f" (all: {sum(kinds.values()):.1f})",
                      "", "PyTorch, by op (self time): " + ", ".join(
                f"`{op}` {ms:.1f}" for op, ms in list(ops.items())[:top]) + f" (all: {sum(ops.values()):.1f})"]
    title = (f"\n### CPU profile of one training step by component — {datetime.date.today()}; "
             f"{CONVS[args.native_convs]}; "
             f"{environment()}; {args.steps} steps\n")
    text = title + "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
