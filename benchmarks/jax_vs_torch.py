"""One training step (forward + backward + Adam) of the same model in jitted JAX and in PyTorch.

    python benchmarks/jax_vs_torch.py [--repeats 10] [--compile] [--append benchmarks/RESULTS.md]

Same architecture, batch and input size on both sides (the torch models are torchvision's, or the
plain-PyTorch U-Net / U-ViT of tests/test_convert.py); weights are converted so both start equal.
Reports the median step time after warm-up and the ratio torch / JAX (> 1: JAX is faster).
Needs the [torch] extra.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_convert import TorchUNet, TorchUViT  # noqa: E402  (the plain-PyTorch references)

import torchvision  # noqa: E402

from ppfer_jax.models import build_model  # noqa: E402

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
}


def _median_seconds(step, repeats: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jax_step_time(spec, fields, shape, loss_kind, repeats):
    model = build_model(spec, **fields)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(np.moveaxis(np.empty(shape), 1, -1).shape), jnp.float32)
    labels = jnp.zeros((shape[0],), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(1e-4)
    opt = tx.init(params)
    is_uvit = spec["name"] == "uvit"

    @jax.jit
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

    def run():
        *new, loss = step(*state)
        state[:] = new
        loss.block_until_ready()
    return _median_seconds(run, repeats)


def torch_step_time(make, shape, loss_kind, repeats, compile_model):
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
    return _median_seconds(run, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--append", type=Path, default=None, help="append a Markdown table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    header = "| model (fwd+bwd+Adam) | JAX jit (ms) | torch eager (ms) | eager / JAX |"
    rows = [header, "|---|---|---|---|"]
    if args.compile:
        rows = [header[:-1] + " torch.compile (ms) | compile / JAX |", "|---|---|---|---|---|---|"]
    for name, (make, (spec, fields), shape, loss_kind) in CASES.items():
        t_jax = jax_step_time(spec, fields, shape, loss_kind, args.repeats)
        t_eager = torch_step_time(make, shape, loss_kind, args.repeats, False)
        row = f"| {name} | {1e3 * t_jax:.1f} | {1e3 * t_eager:.1f} | {t_eager / t_jax:.2f} |"
        if args.compile:
            try:
                t_comp = torch_step_time(make, shape, loss_kind, args.repeats, True)
                row += f" {1e3 * t_comp:.1f} | {t_comp / t_jax:.2f} |"
            except Exception as error:  # torch.compile fails on some set-ups; say so in the table
                row += f" failed ({type(error).__name__}) | - |"
        rows.append(row)
        print(row, flush=True)
    device = jax.devices()[0]
    title = (f"\n### JAX vs PyTorch, one training step — {datetime.date.today()}, {device.platform} "
             f"({device.device_kind}), {platform.processor() or platform.machine()}, jax {jax.__version__}, "
             f"torch {torch.__version__}, median of {args.repeats} after 2 warm-up steps\n")
    if args.append:
        with open(args.append, "a") as file:
            file.write(title + "\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
