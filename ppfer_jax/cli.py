"""`ppfer-jax` command line: ``run``, ``reproduce``, ``sweep``, ``check``, ``show-data``, ``convert``, ``prepare``,
``export``, ``anonymize``.

``run`` trains every stage of the method that is not finished in ``--workdir``
(see ``ppfer_jax.pipeline``), evaluates, writes report.md/json/png and prints
Table 1 and Table 2. ``reproduce`` does the same, then runs the paper's baselines, threat model and ablations
(``ppfer_jax.reproduce``) and writes Tables 1-4 and Figure 1 (suite_report.md, privacy_utility.png).
``sweep`` runs ``run`` over seeds and identity counts and writes the statistic over them (``ppfer_jax.sweep``).
``prepare cremad|dfew`` builds a real data set from the user's own download (CREMA-D, DFEW) as TFDS
array_record files. ``export`` writes a finished run's
anonymiser as an inference bundle, and ``anonymize`` turns videos into anonymised mp4s with it.

Configs are named big_vision style, ``--config configs/synthetic.py[:arg]``, and any
key can be overridden with ``--config.a.b=value`` (unknown keys stop the run).
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from ppfer_jax import parallel
from ppfer_jax.config import DEFAULT_CONFIG, load_config


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    parallel.use_compilation_cache()
    try:
        config = load_config(args.config, overrides)
        args.overrides = overrides  # ``sweep`` hands them on to its runs
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
    run.add_argument("--jobs", type=int, default=None,
                     help="processes training independent stages at once (default: 2 on a CPU with 2 or more "
                          "cores, else 1; 1: one stage after another, in run order)")
    reproduce = command("reproduce", _reproduce, "run the paper's whole evaluation: the method, the Table 1 "
                        "baselines, the threat model (Table 3) and the ablations (Table 4), reusing finished stages")
    reproduce.add_argument("--workdir", type=Path, default=Path("workdir"),
                           help="where outputs go (default ./workdir; a finished `run` there is reused)")
    reproduce.add_argument("--rows", default=None,
                           help="comma-separated rows to run (default: config suite.rows, all of them), e.g. "
                                "blur1,optical_flow,task5")
    reproduce.add_argument("--jobs", type=int, default=None,
                           help="processes scoring rows at once (default: 2 on a CPU with 2 or more cores, else 1)")
    sweep = command("sweep", _sweep, "run `run` for every seed x identity count that is not finished under --workdir "
                    "(or print the commands, for a cluster scheduler), then write the mean, spread and worst case "
                    "over the runs and the goals they meet (sweep.md, sweep.json)")
    sweep.add_argument("--workdir", type=Path, required=True,
                       help="the sweep's root: run S x N goes to ROOT/seedS-identitiesN, its log to ROOT/logs/")
    sweep.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4, 0,2,7 or 0-2,5 (default 0-4)")
    sweep.add_argument("--num_identities", default=None,
                       help="identity counts, same form, e.g. 8,12,16 (default: the config's data.num_identities)")
    sweep.add_argument("--jobs", type=int, default=None, help="each run's `run --jobs` (default: run's own)")
    sweep.add_argument("--runs_at_once", type=int, default=None,
                       help="runs at the same time on this machine (default: a quarter of the CPU cores, at least 1; "
                            "use 1 on an accelerator)")
    sweep_mode = sweep.add_mutually_exclusive_group()
    sweep_mode.add_argument("--commands", action="store_true",
                            help="print the command of each run that is not finished, one a line, and exit")
    sweep_mode.add_argument("--aggregate", action="store_true",
                            help="run nothing: aggregate the finished runs and list the missing ones")
    check = command("check", _check, "build every configured model and run it on one real batch")
    check.add_argument("--workdir", type=Path, default=Path("workdir"), help="where outputs go (default ./workdir)")
    show = command("show-data", _show_data, "write a PNG grid of clips from the configured data set")
    show.add_argument("--split", default="train", help="train | test | wild (default train)")
    show.add_argument("--clips", type=int, default=6, help="number of clips (rows) to show (default 6)")
    show.add_argument("--out", type=Path, default=Path("data_preview.png"), help="PNG path (default data_preview.png)")
    convert = command("convert", _convert, "convert a PyTorch checkpoint (.pth) into Flax variables for init_from")
    convert.add_argument("source", type=Path, nargs="?", default=None,
                         help="the .pth file (a state dict); for --model mtcnn a directory holding pnet.pt, rnet.pt, "
                              "onet.pt or a facenet-pytorch wheel (default: the installed facenet-pytorch)")
    convert.add_argument("--model", required=True,
                         help="resnet18 | resnet34 | resnet50 | r3d_18 | unet | uvit | mtcnn (facenet-pytorch's face "
                              "detector, for `anonymize --detector`)")
    convert.add_argument("--out", type=Path, required=True, help="output directory (variables.msgpack, spec.json)")
    convert.add_argument("--num-classes", type=int, default=None,
                         help="classifiers: the configured class count (a different head is re-initialised)")
    convert.add_argument("--in-channels", type=int, default=3, help="input channels (9 for a high-band network)")
    convert.add_argument("--field", action="append", default=[], metavar="KEY=VALUE",
                         help="a model field, e.g. width=64, size=H, out_channels=9 (repeatable)")
    prepare = command("prepare", _prepare, "build CREMA-D or DFEW as a TFDS data set from your own download "
                      "(resumable; the --config is not used)")
    prepare.add_argument("dataset", choices=("cremad", "dfew"))
    prepare.add_argument("--manual_dir", type=Path, required=True,
                         help="your download: the folder holding VideoFlash/ (CREMA-D) or EmoLabel_DataSplit/ and "
                              "Clip/ (DFEW)")
    prepare.add_argument("--data_dir", type=Path, default=Path("~/tensorflow_datasets"),
                         help="where the TFDS data set goes (default ~/tensorflow_datasets, the configs' data_dir)")
    prepare.add_argument("--image_size", type=int, default=112, help="clip frame size in pixels (default 112)")
    prepare.add_argument("--num_frames", type=int, default=16, help="frames per clip (default 16, the paper's)")
    prepare.add_argument("--crop", default="0.5,0.5,1",
                         help="square face box 'centre_y,centre_x,size' as fractions of the frame height, width "
                              "and shorter side (default 0.5,0.5,1: the largest centred square)")
    prepare.add_argument("--max_bad_fraction", type=float, default=0.01,
                         help="stop when more than this share of the files cannot be used (default 0.01); "
                              "fewer are skipped and listed")
    prepare.add_argument("--workers", type=int, default=None, help="decoding processes (default: all CPUs)")
    prepare.add_argument("--keep_cache", action="store_true",
                         help="keep the decoded clips under DATA_DIR/downloads/ppfer_clips after the build")
    prepare.add_argument("--test_clips", type=int, default=None,
                         help="cremad: test split size (default 2232, the paper's)")
    prepare.add_argument("--split_seed", type=int, default=0, help="cremad: seed of the test split (default 0)")
    prepare.add_argument("--fold", type=int, nargs="+", default=[1], help="dfew: official fold(s) 1-5 (default 1)")
    prepare.add_argument("--one_random_frame", action="store_true",
                         help="dfew: keep one random frame per clip (expression-controller pretraining)")
    prepare.add_argument("--clip_dir", default=None,
                         help="dfew: folder of clips under manual_dir (default Clip/clip_224x224)")
    export = command("export", _export, "write a finished run's anonymiser (F_lpr, F_hpr, F_fc; F_u on request) as a "
                     "self-contained inference bundle directory (the --config is not used)")
    export.add_argument("--workdir", type=Path, default=Path("workdir"), help="the run's --workdir (default ./workdir)")
    export.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    export.add_argument("--with-utility", action="store_true",
                        help="include the utility model F_u, for `anonymize --predictions`")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    export.add_argument("--method", choices=("ppfer", "ppfer_robust"), default=None,
                        help="which method row's anonymiser (default: the one whose privacy holds best against the "
                             "run's fresh attackers)")
    anonymize = command("anonymize", _anonymize, "anonymise videos with an exported bundle: every face is found, "
                        "tracked, replaced by its privacy-preserved, feature-compensated version and blended back "
                        "into the full frame, written as an mp4 at the input's size and frame rate. A frame where a "
                        "tracked face is lost (or no face is found) is pixelated whole, and counted. Audio is not "
                        "copied (a voice identifies a person), nor any metadata (the --config is not used)")
    anonymize.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                           help="video files (.mp4 .avi .flv .mov .mkv .webm) or directories of frame images")
    anonymize.add_argument("--bundle", type=Path, required=True, help="a `ppfer-jax export` directory")
    anonymize.add_argument("-o", "--out", type=Path, required=True,
                           help="the output .mp4 (one input), or a directory for <input name>.mp4 files")
    anonymize.add_argument("--predictions", action="store_true",
                           help="write F_u's expression per clip of T frames to a .json beside each mp4 "
                                "(needs a bundle exported --with-utility)")
    anonymize.add_argument("--centre-square", action="store_true",
                           help="no face detection: anonymise the centred square of each frame, resized to the "
                                "bundle's size, and write only that square (for bundles trained on pre-cropped "
                                "faces, or videos that are already face crops)")
    anonymize.add_argument("--detector", type=Path, default=None,
                           help="the face detector directory (`ppfer-jax convert --model mtcnn --out DIR`; default "
                                "$PPFER_JAX_DETECTOR or ~/.cache/ppfer_jax/mtcnn, converted there once from an "
                                "installed facenet-pytorch)")
    anonymize.add_argument("--margin", type=float, default=None,
                           help="a face's square crop is its box's longer side grown by this share (default: the "
                                "bundle's data.face_margin, else 0.4, as `prepare --face_crop detect`)")
    anonymize.add_argument("--carry", type=int, default=5,
                           help="frames a lost face keeps its last box before the whole frame is pixelated "
                                "(default 5)")
    anonymize.add_argument("--no-face", choices=("pixelate", "keep"), default="pixelate",
                           help="a frame where no face is found (and none is lost): pixelated whole (default; a "
                                "missed face cannot be told from no face) or written unchanged")
    anonymize.add_argument("--min-face", type=int, default=20,
                           help="smallest face searched for, in pixels (default 20)")
    anonymize.add_argument("--keep-size", action="store_true",
                           help="--centre-square: write the input's resolution (its centred square) instead of the "
                                "bundle's")
    anonymize.add_argument("--full-colour", action="store_true",
                           help="encode H.264 4:4:4, keeping the anonymised frames' colour at full resolution "
                                "(default 4:2:0, which every player reads, halves it; many players cannot play 4:4:4)")
    anonymize.add_argument("--fps", type=Fraction, default=Fraction(25),
                           help="frame rate of a directory of frames, e.g. 25 or 30000/1001 (default 25)")
    anonymize.add_argument("--batch-clips", type=int, default=8,
                           help="clips of T frames anonymised per jitted call (default 8)")
    return parser


def _start_training(config) -> None:
    from absl import flags
    from absl import logging as absl_logging

    from ppfer_jax.parallel import initialize_distributed

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's per-restore read-only notices drown the progress
    flags.FLAGS.mark_as_parsed()  # grain's loader worker processes read absl flags
    initialize_distributed(config)  # multi-host runs: join the other processes before touching a device


def _diverged(command: str, error: FloatingPointError) -> int:
    print(f"ppfer-jax {command}: error: training diverged: {error}. Lower the stage's learning rate "
          f"(--config.train.<stage>.learning_rate=...) and run again; it resumes from the last good "
          f"checkpoint", file=sys.stderr)
    return 1


def _run(config, args) -> int:
    import time

    from ppfer_jax import pipeline, report

    _start_training(config)
    start = time.perf_counter()
    try:
        result = pipeline.run(config, args.workdir, rerun=args.stage, jobs=args.jobs)
    except FloatingPointError as error:
        return _diverged("run", error)
    print("\n" + report.tables(result))
    print(f"\nreport: {args.workdir / 'report.md'} (+ report.json, report.png); "
          f"total {time.perf_counter() - start:.0f} s")
    return 0


def _reproduce(config, args) -> int:
    import time

    from ppfer_jax import reproduce, reproduce_report

    if args.rows:
        config.suite.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    _start_training(config)
    start = time.perf_counter()
    try:
        result = reproduce.reproduce(config, args.workdir, jobs=args.jobs)
    except FloatingPointError as error:
        return _diverged("reproduce", error)
    print("\n" + reproduce_report.markdown(result))
    print(f"\nreport: {args.workdir / 'suite_report.md'} (+ suite_report.json, privacy_utility.png, "
          f"methods_frames.png); this call {time.perf_counter() - start:.0f} s")
    return 0


def _sweep(config, args) -> int:
    from ppfer_jax import sweep

    seeds = sweep.parse_values(args.seeds, "--seeds")
    counts = (sweep.parse_values(args.num_identities, "--num_identities", minimum=2)
              if args.num_identities is not None else (config.data.num_identities,))
    return sweep.main(args.workdir, args.config, args.overrides, seeds, counts, jobs=args.jobs,
                      runs_at_once=args.runs_at_once, commands=args.commands, aggregate_only=args.aggregate)


def _check(config, args) -> int:
    from ppfer_jax import check

    print(check.format_summary(check.run_check(config, args.workdir)))
    return 0


def _show_data(config, args) -> int:
    from data_pipelines import synthetic
    from ppfer_jax.figures import save_png, synthetic_preview

    if config.data.name != "synthetic":
        raise ValueError(f"show-data renders the built-in synthetic set; config data.name is {config.data.name!r}")
    image = synthetic_preview(synthetic.spec_from_config(config), args.split, args.clips)
    save_png(args.out, image)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]} px, {args.clips} {args.split} clips)")
    return 0


def _convert(config, args) -> int:
    import jax

    from ppfer_jax import convert
    from ppfer_jax.config import parse_value
    from ppfer_jax.models import build_model

    if args.model == "mtcnn":
        from ppfer_jax import face_detection

        out = face_detection.convert_mtcnn(args.out, args.source)
        print(f"converted MTCNN's pnet, rnet, onet -> {out}; use it with `ppfer-jax anonymize --detector {out}`")
        return 0
    if args.source is None:
        raise ValueError(f"convert --model {args.model}: the .pth file to convert is missing")

    spec = {"name": args.model}
    for item in args.field:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--field expects KEY=VALUE, got {item!r}")
        spec[key] = parse_value(value)
    roles = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    if args.model == "uvit":
        roles["in_channels"] = args.in_channels
    model = build_model(spec, **roles)
    state_dict = convert.load_torch_state_dict(args.source)
    x = _dummy_input(args.model, spec.get("img_size", 32), args.in_channels)
    target = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)
    variables = convert.torch_to_flax(state_dict, args.model, target)
    out = convert.save_variables(variables, args.out, {**spec, **roles})
    print(f"converted {len(state_dict)} tensors of {args.source} -> {out / 'variables.msgpack'}; use it with "
          f"--config.model.<role>.init_from={out}")
    return 0


def _dummy_input(model: str, size: int, channels: int):
    import jax.numpy as jnp

    return jnp.zeros((1, 4, size, size, channels) if model == "r3d_18" else (1, size, size, channels))


def _prepare(config, args) -> int:
    import os

    from absl import logging as absl_logging

    from data_pipelines import cremad, dfew, video

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's notices (custom config, new folder) are not news here
    common = dict(image_size=args.image_size, num_frames=args.num_frames, crop=video.CropBox.parse(args.crop),
                  max_bad_fraction=args.max_bad_fraction, workers=args.workers or os.cpu_count() or 1)
    if args.dataset == "cremad":
        extra = {} if args.test_clips is None else {"test_clips": args.test_clips}
        summaries = [cremad.prepare(args.manual_dir, args.data_dir, split_seed=args.split_seed,
                                    keep_cache=args.keep_cache, **extra, **common)]
    else:
        clip_dir = {} if args.clip_dir is None else {"clip_dir": args.clip_dir}
        summaries = [dfew.prepare(args.manual_dir, args.data_dir, fold=fold, one_random_frame=args.one_random_frame,
                                  keep_cache=args.keep_cache or fold != args.fold[-1], **clip_dir, **common)
                     for fold in args.fold]
    print("\n".join(video.format_summary(summary) for summary in summaries))
    return 0


def _export(config, args) -> int:
    from absl import logging as absl_logging

    from ppfer_jax import bundle, export

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's per-restore read-only notices
    out = export.export(args.workdir, args.out, with_utility=args.with_utility, overwrite=args.overwrite,
                        method=args.method)
    print(bundle.format_summary(bundle.load_bundle(out)))
    return 0


def _anonymize(config, args) -> int:
    from ppfer_jax import anonymize
    from ppfer_jax.bundle import load_bundle

    if args.batch_clips < 1:
        raise ValueError(f"--batch-clips: expected a positive number of clips, got {args.batch_clips}")
    if args.fps <= 0:
        raise ValueError(f"--fps: expected a positive frame rate, got {args.fps}")
    if args.carry < 0 or args.min_face < 12:
        raise ValueError(f"--carry {args.carry} / --min-face {args.min_face}: expected --carry >= 0 and --min-face "
                         f">= 12 (PNet's window)")
    if args.margin is not None and args.margin < 0:
        raise ValueError(f"--margin: expected a share >= 0, got {args.margin}")
    if not args.centre_square and (args.predictions or args.keep_size):
        raise ValueError("--predictions and --keep-size need --centre-square (full-frame output keeps the input's "
                         "size; per-face expression clips are not written yet)")
    bundle = load_bundle(args.bundle)
    face_options = {}
    if not args.centre_square:
        from ppfer_jax.face_detection import find_detector

        face_options = dict(detector=find_detector(args.detector, min_face=args.min_face), margin=args.margin,
                            carry=args.carry, no_face=args.no_face)
    results, failures = anonymize.anonymize_all(bundle, args.inputs, args.out, predictions=args.predictions,
                                                keep_size=args.keep_size, full_colour=args.full_colour, fps=args.fps,
                                                batch_clips=args.batch_clips, **face_options)
    if failures:
        print(f"ppfer-jax anonymize: {len(failures)} of {len(args.inputs)} inputs failed: "
              f"{', '.join(map(str, failures))}", file=sys.stderr)
        return 1
    return 0


def _message(error: Exception) -> str:
    # KeyError's str() wraps the message in quotes.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


if __name__ == "__main__":
    sys.exit(main())
