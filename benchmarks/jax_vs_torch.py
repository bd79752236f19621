"""One training step (forward + backward + Adam) of the same model in jitted JAX and in PyTorch.

    python benchmarks/jax_vs_torch.py [--repeats 10] [--reps 3] [--native-convs] [--compile] [--append RESULTS.md]

Same architecture, batch and input size on both sides (the torch models are torchvision's, the plain-PyTorch
U-Net / U-ViT of tests/test_convert.py, or, for the default config's width-8 networks, ``TorchNarrowResNet``).
Each model is built and compiled once per framework; then ``--reps`` repetitions interleave the two (JAX,
torch, JAX, torch, ...), each timing the median of ``--repeats`` steps after warm-up, so one noisy stretch
cannot flip a ratio. Reports the median step times, the ratio torch / JAX (> 1: JAX is faster) as the median
over repetitions with its range, the JAX step's compile time (lowering and XLA, once, no persistent cache), and
the versions and thread counts. The JAX step donates its state, as the project's stages do. Needs the [torch] extra.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_convert import TorchUNet, TorchUViT  # noqa: E402  (the plain-PyTorch references)

import torchvision  # noqa: E402

from ppfer_jax.models import build_model, layers  # noqa: E402

class TorchNarrowResNet(torch.nn.Module):
    """ResNet-18 / R3D-18 at any width, in plain PyTorch (torchvision fixes the width at 64): the default config's
    networks. 2-D: the small-input stem (3x3, stride 1, no max-pool); 3-D: R3D's (3x7x7, stride (1, 2, 2))."""

    def __init__(self, width: int, num_classes: int, video: bool):
        super().__init__()
        conv, norm = (torch.nn.Conv3d, torch.nn.BatchNorm3d) if video else (torch.nn.Conv2d, torch.nn.BatchNorm2d)
        stem = conv(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False) if video else conv(3, width, 3, 1, 1,
                                                                                              bias=False)
        layers, channels = [stem, norm(width), torch.nn.ReLU()], width
        for stage in range(4):
            for block in range(2):
                out, stride = width * 2**stage, 2 if stage > 0 and block == 0 else 1
                layers.append(_TorchBasicBlock(conv, norm, channels, out, stride))
                channels = out
        self.body, self.head = torch.nn.Sequential(*layers), torch.nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(2).mean(-1))


class _TorchBasicBlock(torch.nn.Module):
    def __init__(self, conv, norm, channels: int, out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(channels, out, 3, stride, 1, bias=False), norm(out)
        self.conv2, self.bn2 = conv(out, out, 3, 1, 1, bias=False), norm(out)
        self.shortcut = (torch.nn.Sequential(conv(channels, out, 1, stride, bias=False), norm(out))
                         if stride != 1 or channels != out else torch.nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


# name: (torch model, our spec + role fields, NCHW / NCDHW input shape, loss kind)
CASES = {
    "unet (f=16, 64 px, b=8)": (lambda: TorchUNet(3, 3, 16, True), ({"name": "unet", "features": 16, "depth": 2},
                                                                    {"out_channels": 3}), (8, 3, 64, 64), "l1"),
    "resnet50 (64 px, b=8)": (lambda: torchvision.models.resnet50(num_classes=12),
                              ({"name": "resnet50"}, {"num_classes": 12}), (8, 3, 64, 64), "ce"),
    "r3d_18 (8x32x32, b=4)": (lambda: torchvision.models.video.r3d_18(num_classes=6),
                              ({"name": "r3d_18"}, {"num_classes": 6}), (4, 3, 8, 32, 32), "ce"),
    "uvit (dim 128, depth 6, 32 px, b=8)": (
        lambda: TorchUViT(32, 4, 3, 128, 6, 4, num_classes=2),
        ({"name": "uvit", "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_time_embed": True,
          "num_classes": 2}, {"img_size": 32, "in_channels": 3}), (8, 3, 32, 32), "l1"),
    # the default config's (configs/synthetic.py) identity / expression classifiers and F_u, at their batches
    "resnet18 w8 (32 px, b=64)": (lambda: TorchNarrowResNet(8, 12, video=False),
                                  ({"name": "resnet18", "width": 8, "small_input": True}, {"num_classes": 12}),
                                  (64, 3, 32, 32), "ce"),
    "r3d_18 w8 (8x32x32, b=16)": (lambda: TorchNarrowResNet(8, 6, video=True),
                                  ({"name": "r3d_18", "width": 8}, {"num_classes": 6}), (16, 3, 8, 32, 32), "ce"),
}


CONVS = {False: "layers.conv (wide small-map convs as patches)", True: "XLA native convolution"}  # by --native-convs


def _median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class JaxStep(NamedTuple):
    run: Callable[[], None]  # one warmed-up step
    compiled: jax.stages.Compiled  # the step run runs, and its state (for profiling)
    state: list
    compile_seconds: float  # lowering and compiling the step, before any run


def jax_step(spec, fields, shape, loss_kind) -> JaxStep:
    """A warmed-up, jitted JAX training step of the model, with the time its compilation took."""
    model = build_model(spec, **fields)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(np.moveaxis(np.empty(shape), 1, -1).shape), jnp.float32)
    labels = jnp.zeros((shape[0],), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(1e-4)
    opt = tx.init(params)
    is_uvit = spec["name"] == "uvit"

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, stats, opt):
        def loss_fn(params):
            if is_uvit:
                return jnp.mean(jnp.abs(model.apply({"params": params}, x) - x)), stats
            out, updates = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                       mutable=["batch_stats"])
            loss = (jnp.mean(jnp.abs(out - x)) if loss_kind == "l1"
                    else optax.softmax_cross_entropy_with_integer_labels(out, labels).mean())
            return loss, updates["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), stats, opt, loss

    state = [params, stats, opt]
    start = time.perf_counter()
    compiled = step.lower(*state).compile()
    compile_seconds = time.perf_counter() - start

    def run():
        *new, loss = compiled(*state)
        state[:] = new
        loss.block_until_ready()
    for _ in range(2):
        run()
    return JaxStep(run, compiled, state, compile_seconds)


def torch_step(make, shape, loss_kind, compile_model):
    """A warmed-up PyTorch training step of the model (eager, or ``torch.compile``d)."""
    torch.manual_seed(0)
    model = make().train()
    is_uvit = isinstance(model, TorchUViT)
    x = torch.randn(*shape)
    labels = torch.zeros(shape[0], dtype=torch.long)
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        out = forward(x, torch.ones(shape[0]), torch.ones(shape[0], dtype=torch.long)) if is_uvit else forward(x)
        loss = (out - x).abs().mean() if loss_kind == "l1" else torch.nn.functional.cross_entropy(out, labels)
        loss.backward()
        opt.step()
    for _ in range(2):
        run()
    return run


def environment() -> str:
    return (f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU cores, torch threads "
            f"{torch.get_num_threads()} (intra-op), XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or 'none'}, "
            f"{platform.processor() or platform.machine()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="steps per timing (their median is taken)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (at least 3)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--models", nargs="*", default=None, help="a subset of the models (name prefixes)")
    parser.add_argument("--native-convs", action="store_true",
                        help="layers.PATCHES_ON_CPU off: XLA's own convolution for wide small-map and 1x1 convs too")
    parser.add_argument("--append", type=Path, default=None, help="append a Markdown table to this file")
    args = parser.parse_args(argv)
    layers.PATCHES_ON_CPU = not args.native_convs
    if args.reps < 3:
        parser.error("--reps: at least 3 interleaved repetitions")
    header = ("| model (fwd+bwd+Adam) | JAX jit (ms) | torch eager (ms) | eager / JAX (median, range) | "
              "JAX compile (s) |")
    rows = [header, "|---|---|---|---|---|"]
    if args.compile:
        rows = [header + " torch.compile (ms) | compile / JAX |", "|---|---|---|---|---|---|---|"]
    cases = {name: case for name, case in CASES.items()
             if not args.models or any(name.startswith(m) for m in args.models)}
    for name, (make, (spec, fields), shape, loss_kind) in cases.items():
        jax_run = jax_step(spec, fields, shape, loss_kind)
        torch_run = torch_step(make, shape, loss_kind, False)
        t_jax, t_eager = [], []
        for _ in range(args.reps):
            t_jax.append(_median_seconds(jax_run.run, args.repeats))
            t_eager.append(_median_seconds(torch_run, args.repeats))
        ratios = [e / j for e, j in zip(t_eager, t_jax)]
        row = (f"| {name} | {1e3 * statistics.median(t_jax):.1f} | {1e3 * statistics.median(t_eager):.1f} | "
               f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
               f"{jax_run.compile_seconds:.1f} |")
        if args.compile:
            try:
                t_comp = _median_seconds(torch_step(make, shape, loss_kind, True), args.repeats)
                row += f" {1e3 * t_comp:.1f} | {t_comp / statistics.median(t_jax):.2f} |"
            except Exception as error:  # torch.compile fails on some set-ups; say so in the table
                row += f" failed ({type(error).__name__}) | - |"
        rows.append(row)
        print(row, flush=True)
    device = jax.devices()[0]
    title = (f"\n### JAX vs PyTorch, one training step — {datetime.date.today()}, {device.platform} "
             f"({device.device_kind}); {CONVS[args.native_convs]}; "
             f"{environment()}; median of {args.repeats} steps after 2 warm-up steps, {args.reps} interleaved "
             f"repetitions\n")
    print(title)
    if args.append:
        with open(args.append, "a") as file:
            file.write(title + "\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
