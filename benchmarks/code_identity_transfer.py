"""Does PPFER-robust's identity-free code stay identity-free on people its training never saw?

The code's identity terms (each person's codes against the batch's, the co-trained adversaries) see only the
training people. This reads, in a finished run's workdir, how much identity a linear attacker trained from scratch
finds in the code z of (a) the training people's val clips -- the held-out ridge attacker that chooses the
checkpoint -- and (b) the open-set people, fit on half of each person's clips and scored on the other half, for
the code of the selected checkpoint and, as the reference, for the raw frames' 8x8 grey thumbnails. A code that
carries no identity reads about chance for both; a gap between (a) and (b) means the erasure is fitted to the
training people.

    python benchmarks/code_identity_transfer.py --workdir WORKDIR [--workdir OTHER ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from data_pipelines.sources import OPEN_SET
from ppfer_jax.export import load_run_config
from ppfer_jax.nets import CODE, flatten_frames, to_float
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import robust, run
from ppfer_jax.stages.robust_privacy import encode, ridge_identity_probe


def probes(workdir: Path) -> dict:
    config = load_run_config(workdir)
    ctx = run.context(config, workdir, mesh_from_config(config))
    state = ctx.load(robust.PRIVACY)
    params = {name: state.params[name] for name in CODE.enhancers}
    out = {"num_identities": config.data.num_identities, "num_openset_identities":
           config.data.num_openset_identities}
    for split in ("val", OPEN_SET):
        clips = ctx.source(split).arrays
        frames, _ = flatten_frames(to_float(jnp.asarray(clips["video"])))
        per_clip = clips["video"].shape[1]
        identity = np.repeat(clips["identity"], per_clip)
        clip = np.repeat(np.arange(len(clips["identity"])), per_clip)
        code = np.asarray(encode(ctx.nets, params, frames))
        grey = np.asarray(frames).mean(-1).reshape(len(code), 4, 8, 4, 8).mean((2, 4)).reshape(len(code), -1)
        out[split] = {"code": ridge_identity_probe(code, identity, clip),
                      "raw 8x8 grey thumbnail": ridge_identity_probe(grey, identity, clip),
                      "chance": 1.0 / len(np.unique(identity))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, action="append", required=True)
    args = parser.parse_args()
    for workdir in args.workdir:
        print(json.dumps({"workdir": str(workdir), **probes(workdir)}))


if __name__ == "__main__":
    main()
