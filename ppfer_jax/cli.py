"""`ppfer-jax` command line: ``run``, ``check`` and ``show-data``.

``run`` trains every stage of the method that is not finished in ``--workdir``
(see ``ppfer_jax.pipeline``), evaluates, writes report.md/json/png and prints
Table 1 and Table 2.

Configs are named big_vision style, ``--config configs/synthetic.py[:arg]``, and any
key can be overridden with ``--config.a.b=value`` (unknown keys stop the run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ppfer_jax.config import DEFAULT_CONFIG, load_config


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    try:
        config = load_config(args.config, overrides)
        return args.handler(config, args)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"ppfer-jax {args.command}: error: {_message(error)}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppfer-jax", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=DEFAULT_CONFIG,
                         help=f"config file[:arg] (default {DEFAULT_CONFIG}); override keys with --config.KEY=VALUE")
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", _run, "run the method on the configured data set (default: built-in synthetic set)")
    run.add_argument("--workdir", type=Path, default=Path("workdir"), help="where outputs go (default ./workdir)")
    run.add_argument("--stage", default=None,
                     help="re-run this stage (e.g. s1/privacy) and every stage downstream of it")
    check = command("check", _check, "build every configured model and run it on one real batch")
    check.add_argument("--workdir", type=Path, default=Path("workdir"), help="where outputs go (default ./workdir)")
    show = command("show-data", _show_data, "write a PNG grid of clips from the configured data set")
    show.add_argument("--split", default="train", help="train | test | wild (default train)")
    show.add_argument("--clips", type=int, default=6, help="number of clips (rows) to show (default 6)")
    show.add_argument("--out", type=Path, default=Path("data_preview.png"), help="PNG path (default data_preview.png)")
    return parser


def _run(config, args) -> int:
    import time

    from absl import logging as absl_logging

    from ppfer_jax import pipeline, report

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's per-restore read-only notices drown the progress
    start = time.perf_counter()
    try:
        result = pipeline.run(config, args.workdir, rerun=args.stage)
    except FloatingPointError as error:
        print(f"ppfer-jax run: error: training diverged: {error}. Lower the stage's learning rate "
              f"(--config.train.<stage>.learning_rate=...) and run again; it resumes from the last good "
              f"checkpoint", file=sys.stderr)
        return 1
    print("\n" + report.tables(result))
    print(f"\nreport: {args.workdir / 'report.md'} (+ report.json, report.png); "
          f"total {time.perf_counter() - start:.0f} s")
    return 0


def _check(config, args) -> int:
    from ppfer_jax import check

    print(check.format_summary(check.run_check(config, args.workdir)))
    return 0


def _show_data(config, args) -> int:
    from data_pipelines import synthetic
    from ppfer_jax.figures import save_png

    if config.data.name != "synthetic":
        raise ValueError(f"show-data renders the built-in synthetic set; config data.name is {config.data.name!r}")
    image = synthetic.preview_grid(synthetic.spec_from_config(config), args.split, args.clips)
    save_png(args.out, image)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]} px, {args.clips} {args.split} clips)")
    return 0


def _message(error: Exception) -> str:
    # KeyError's str() wraps the message in quotes.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


if __name__ == "__main__":
    sys.exit(main())
