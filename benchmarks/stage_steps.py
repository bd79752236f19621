"""Per-stage train-step cost: step time, clips/s, FLOPs (XLA cost analysis), TFLOP/s, MFU and device memory.

    python benchmarks/stage_steps.py                                   # synthetic default, every stage, timed
    python benchmarks/stage_steps.py --config configs/cremad.py --compile_only --stages s2/compensation
    python benchmarks/stage_steps.py --devices 1 2 4 8                  # scaling sweep (host devices on CPU)
    python benchmarks/stage_steps.py --append                           # also append the table to RESULTS.md

Each stage's real jitted step (``stages/``, on the config's mesh and shardings) runs on a fixed
batch of the configured global size from a fresh state. FLOPs per step come from XLA's cost analysis of
the compiled step (per device, times the devices); MFU divides the achieved FLOP/s by the device count
times a per-device peak measured in the same process (a large matmul in the config's compute dtype), unless
``--peak_tflops`` gives one. Memory is the device's peak use where
the backend reports it (GPU, TPU), else XLA's compile-time estimate (arguments + outputs + temporaries).
``--compile_only`` skips running: FLOPs and the memory estimate of paper-size configs on any machine.
On CPU, host devices (``--devices``) share the same cores (their MFU falls as 1/devices): the sweep checks
the mechanics, not scaling.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure_peak_tflops(dtype: str, size: int) -> float:
    """Dense matmul FLOP/s in ``dtype`` on the default device: the peak MFU is measured against."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    repeats, start = 10, time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def fake_batch(config, stage, batch_size: int):
    """A global batch of zeros with the fields and shapes the stage's split has."""
    import numpy as np

    d = config.data
    frames = 1 if stage.split == "wild" and d.name != "synthetic" else d.num_frames
    return {"video": np.zeros((batch_size, frames, d.image_size, d.image_size, 3), np.uint8),
            "identity": np.zeros((batch_size,), np.int32), "expression": np.zeros((batch_size,), np.int32)}


def bench_stage(ctx, stage, *, steps: int, compile_only: bool) -> dict:
    import jax

    from ppfer_jax.stage import shape_state, stage_optimizer, state_sharding
    from ppfer_jax.parallel import global_batch
    from ppfer_jax.training import abstract_state, compile_step

    config = ctx.config
    section = config.train[stage.train_key]
    sharding = state_sharding(ctx.nets, ctx.mesh, stage)
    tx = stage_optimizer(config, stage)
    step = compile_step(stage.step(ctx.nets, config, tx), ctx.mesh, sharding)
    batch = global_batch(fake_batch(config, stage, section.batch_size), ctx.mesh)
    key = jax.random.key(0, impl=config.rng_impl)
    start = time.perf_counter()
    compiled = step.lower(abstract_state(shape_state(ctx.nets, stage), sharding), batch, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    # The cost analysis is of the per-device SPMD program: the step's FLOPs are that times the device count.
    flops = float(cost.get("flops", 0.0)) * ctx.mesh.size
    row = {"stage": stage.name, "batch": section.batch_size, "flops_per_step": flops,
           "compile_s": compile_s,
           "xla_memory_estimate_gb": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                      + memory.temp_size_in_bytes) / 1e9 if memory is not None else None}
    if compile_only:
        return row
    state = jax.jit(shape_state(ctx.nets, stage), out_shardings=sharding)()
    state, metrics = compiled(state, batch, key)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for k in range(steps):
        state, metrics = compiled(state, batch, jax.random.fold_in(key, k))
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    stats = jax.devices()[0].memory_stats() or {}
    row.update(step_ms=1e3 * step_s, clips_per_s=section.batch_size / step_s,
               tflops=row["flops_per_step"] / step_s / 1e12,
               peak_memory_gb=stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None)
    return row


def run(args) -> dict:
    import jax

    from ppfer_jax.config import load_config
    from ppfer_jax.recipes import run
    from ppfer_jax.parallel import mesh_from_config

    config = load_config(args.config, args.override)
    names = args.stages or [stage.name for stage in run.STAGES]
    peak = args.peak_tflops
    if peak is None and not args.compile_only:
        size = 4096 if jax.default_backend() != "cpu" else 1024
        peak = measure_peak_tflops("bfloat16" if config.dtype == "bfloat16" else "float32", size)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        ctx = run.context(config, workdir, mesh_from_config(config))
        for name in names:
            row = bench_stage(ctx, run.STAGE_BY_NAME[name], steps=args.steps, compile_only=args.compile_only)
            if peak and "tflops" in row:
                row["mfu"] = row["tflops"] / (peak * jax.device_count())  # the peak is per device
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"config": args.config, "overrides": args.override, "devices": jax.device_count(),
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "dtype": config.dtype,
            "mesh": dict(config.mesh), "peak_tflops": peak, "rows": rows}


def sweep(args) -> list[dict]:
    """This script once per device count, each in a fresh process started with that many host devices."""
    results = []
    for count in args.devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
               "PYTHONPATH": str(REPO)}
        command = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--json",
                   *sum((["--override", o] for o in args.override), []),
                   *(["--stages", *args.stages] if args.stages else []),
                   *(["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else [])]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return results


def markdown(results: list[dict]) -> str:
    import flax
    import jax

    first = results[0]
    lines = [f"{datetime.date.today()}, {first['backend']} ({first['device']}), {platform.machine()} "
             f"{os.cpu_count()} cpus, jax {jax.__version__}, flax {flax.__version__}; config {first['config']} "
             f"{' '.join(first['overrides'])}, dtype {first['dtype']}, peak "
             f"{'%.2f' % first['peak_tflops'] if first['peak_tflops'] else 'n/a'} TFLOP/s (matmul, measured).", "",
             "| devices | stage | global batch | step ms | clips/s | GFLOP/step | TFLOP/s | MFU | memory GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for r in result["rows"]:
            memory = r.get("peak_memory_gb") or r.get("xla_memory_estimate_gb")
            kind = "" if r.get("peak_memory_gb") else " (XLA est.)"
            lines.append(f"| {result['devices']} | {r['stage']} | {r['batch']} | {_num(r.get('step_ms'), '.1f')} | "
                         f"{_num(r.get('clips_per_s'), '.1f')} | {r['flops_per_step'] / 1e9:.2f} | "
                         f"{_num(r.get('tflops'), '.3f')} | {_num(r.get('mfu'), '.1%')} | "
                         f"{_num(memory, '.2f')}{kind} |")
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.py")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--stages", nargs="+", default=None, help="stage names (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per stage after one warm-up step")
    parser.add_argument("--compile_only", action="store_true", help="FLOPs and memory estimate only")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the peak for MFU (default: measured)")
    parser.add_argument("--devices", type=int, nargs="+", default=None, help="sweep these device counts")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (for --devices)")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    results = sweep(args) if args.devices else [run(args)]
    if args.json:
        print(json.dumps(results[0]))
        return
    table = markdown(results)
    print("\n" + table)
    if args.append:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as out:
            out.write(f"\n\n### `benchmarks/stage_steps.py {' '.join(argv or sys.argv[1:])}`\n\n{table}\n")


if __name__ == "__main__":
    main()
