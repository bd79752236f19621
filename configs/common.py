"""Pieces shared by the config files."""

import ml_collections


def stage(steps: int, batch_size: int, learning_rate: float, eval_every: int | None = None,
          schedule: str = "constant", patience: int | None = None) -> ml_collections.ConfigDict:
    """One training stage's schedule. ``batch_size`` is global: split over every process and batch device.
    ``schedule``: "constant", or "cosine" (linear warm-up over a tenth of
    the steps, then cosine decay to 0). ``eval_every``: evaluate and select the best checkpoint this often
    (stages that select one); ``patience``: stop once that many evaluations in a row have not improved on the
    best (None: train all ``steps``)."""
    return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                          eval_every=eval_every, schedule=schedule, patience=patience))


def robust_privacy(*, adversaries: int, restart_every: int, warmup_steps: int, adversary_steps: int = 4,
                   privacy_weight: float = 0.1, mmd_weight: float = 1.0,
                   frames_per_clip: int = 4) -> ml_collections.ConfigDict:
    """``privacy.robust``: how ``ppfer_robust`` trains its code autoencoders (``ppfer_jax/stages/robust_privacy.py``).

    ``objective``: the bounded privacy loss ('kl_uniform' or 'entropy'), worst case over ``adversaries``
    co-trained MLPs on the code, each updated ``adversary_steps`` times per enhancer step; one adversary restarts
    from fresh weights every ``restart_every`` steps, round-robin. ``privacy_weight`` (the adversaries' term) and ``mmd_weight`` (each person's codes against
    the batch's, ``losses.group_mmd``) are reached after ``warmup_steps`` of neither and a linear ramp of as many;
    ``expression_weight``: the code's expression head's CE; ``fidelity_weight``: L1 of the decoded G to the
    original frames (the decoders' loss only). Each step reads ``frames_per_clip`` random frames of each clip.
    """
    return ml_collections.ConfigDict(dict(objective="kl_uniform", adversaries=adversaries,
                                          restart_every=restart_every, adversary_steps=adversary_steps,
                                          privacy_weight=privacy_weight, mmd_weight=mmd_weight,
                                          warmup_steps=warmup_steps, frames_per_clip=frames_per_clip,
                                          expression_weight=1.0, fidelity_weight=1.0))


def code_enhancers(*, features: int, depth: int, code_dim: int) -> dict[str, dict]:
    """``config.model``'s sections of ``ppfer_robust``'s networks: one code autoencoder per Haar band (LL in
    [0, 2], details in [-1, 1]), the MLP identity adversaries on the code and the code's linear expression head."""
    autoencoder = dict(name="code_autoencoder", features=features, depth=depth, code_dim=code_dim, init_from=None)
    return {"robust_enhancer_low": dict(autoencoder, head="sigmoid", out_range=(0.0, 2.0)),
            "robust_enhancer_high": dict(autoencoder, head="tanh", out_range=(-1.0, 1.0)),
            "code_adversary": dict(name="mlp", hidden=(128, 128), init_from=None),
            "code_expression": dict(name="mlp", hidden=(), init_from=None)}


def pprl_vgan(*, features: int) -> dict[str, dict]:
    """``config.model``'s sections of the PPRL-VGAN row (``ppfer_jax/models/vgan.py``); ``features`` = 32 and a
    128-number code are its published sizes."""
    return {"pprl_vgan_generator": dict(name="vgan_generator", features=features, z_dim=128, init_from=None),
            "pprl_vgan_discriminator": dict(name="vgan_discriminator", features=features, hidden=256,
                                            init_from=None)}


def parallelism(fsdp: int = 1) -> dict[str, ml_collections.ConfigDict]:
    """Mesh, parameter-sharding rules and multi-host start (``ppfer_jax/parallel.py``).

    ``mesh``: data x fsdp devices (data=-1: all that fsdp leaves); batches split over both axes.
    ``sharding.rules``: (regex on a state leaf's path such as ``params/f_u/stage1_block0/conv1/kernel`` or
    ``opt_state/0/mu/f_u/...``, 'fsdp' | 'replicate'); the first match wins, no match replicates; 'fsdp' splits
    the leaf's largest axis that the fsdp axis divides, for leaves of at least ``min_size`` elements.
    ``distributed``: ``enabled=True`` calls ``jax.distributed.initialize`` (cluster auto-detected on TPU pods
    and SLURM when the address is None).
    """
    return dict(
        mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp)),
        sharding=ml_collections.ConfigDict(dict(rules=[(".*", "fsdp")], min_size=2**14)),
        distributed=ml_collections.ConfigDict(dict(enabled=False, coordinator_address=None, num_processes=None,
                                                   process_id=None)),
    )


def evaluation_suite(*, sigma_range: tuple[float, float], flow_max_magnitude: float, acc_evaluations: int = 5,
                     narula_phase_steps: tuple[int, int, int] = (100, 50, 50)) -> dict[str, ml_collections.ConfigDict]:
    """The baselines' settings and the rows of ``ppfer-jax reproduce`` (``ppfer_jax/reproduce.py``).

    ``baselines.blur``: Blur 1's sigma is bisected over ``sigma_range`` (pixels) until V_pl's val PLR is within
    ``plr_tolerance`` of PPFER's (at most ``plr_evaluations`` val passes, cheap); Blur 2's until F_u's val ACC is
    within ``acc_tolerance`` of PPFER's (each of at most ``acc_evaluations`` trains an F_u).
    ``baselines.tradeoff``: the anonymiser's privacy objective against the jointly trained adversary ('entropy':
    SPAct's, maximise its entropy; 'neg_ce', 'kl_uniform' as for Algorithm 1) and its weight.
    ``baselines.optical_flow.max_magnitude``: the flow (pixels per frame) rendered at full brightness.
    ``baselines.narula``: the adversarial CNN's rounds (``ppfer_jax/baselines/narula.py``): steps of its phases (a)
    emotion, (b) identity classifier, (c) transformation against it (their sum divides ``train.narula.steps``), the
    weight of the identity CE in (c), and whether (b) starts the identity classifier afresh each round.
    ``baselines.open_set``: the open-set method's suppression loss (``ppfer_jax/baselines/open_set.py``): weights
    of its indistinguishability term and of L1 fidelity, and the similarity temperature.
    ``baselines.swap``: which outside ('wild') person the synthetic oracle swap renders; on real data a directory
    of pre-swapped clips (see ``ppfer_jax/baselines/swap.py``).
    ``suite.rows``: the rows to run, Table 1's then Table 4's; ``suite.ablation_attacks``: also train the adaptive
    and recovery attackers for the ablations (the paper reports PLR and ACC only for them).
    """
    return dict(
        baselines=ml_collections.ConfigDict(dict(
            blur=dict(sigma_range=sigma_range, plr_evaluations=12, plr_tolerance=0.02,
                      acc_evaluations=acc_evaluations, acc_tolerance=0.03),
            tradeoff=dict(objective="entropy", privacy_weight=1.0),
            narula=dict(phase_steps=narula_phase_steps, identity_weight=1.0, restart_identity=True),
            open_set=dict(privacy_weight=1.0, fidelity_weight=1.0, temperature=0.1),
            optical_flow=dict(max_magnitude=flow_max_magnitude),
            swap=dict(outside_identity=0, directory=None),
        )),
        suite=ml_collections.ConfigDict(dict(
            rows=["no_privacy", "blur1", "blur2", "tradeoff", "optical_flow", "swap", "pprl_vgan", "narula",
                  "open_set_priors", "ppfer", "ppfer_robust",
                  "task1", "task2", "task3", "task4", "task5", "task6"],
            ablation_attacks=False,
        )),
    )
