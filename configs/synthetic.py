"""Default config: the built-in synthetic talking-face set, sized for a 2-core CPU.

Usage: ``ppfer-jax run`` (this file is the default) or
``ppfer-jax run --config configs/synthetic.py:tiny`` for the test-size variant.
Architectures are the paper's families at reduced width/resolution; where a value
differs from the paper's, the paper's value is written beside it.
"""

import ml_collections

from configs.common import code_enhancers, evaluation_suite, parallelism, pprl_vgan, robust_privacy, stage


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "default"
    if size not in ("default", "tiny"):
        raise ValueError(f"configs/synthetic.py takes arg 'default' or 'tiny', got {arg!r}")
    tiny = size == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype; params stay float32 ("bfloat16" on accelerators)

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"
    c.data.num_identities = 6 if tiny else 12  # paper (CREMA-D): 91 actors
    # DFEW stand-in: disjoint people, many more than the training people (DFEW: thousands in 16,372 clips). With too
    # few, C_fc memorises them and does not read the training people's expressions; 480 (not 240) is what
    # met the goal on every seed tried (benchmarks/RESULTS.md, "Frame-level expression transfer").
    c.data.num_wild_identities = 24 if tiny else 480
    c.data.clips_per_identity_train = 12 if tiny else 48
    # 36 a person: a 95% interval of about +-4 points on a share of the test clips (n = 432 at 12 people), narrower
    # than the 10-point margins the report's goals leave (benchmarks/RESULTS.md, "Claims over seeds")
    c.data.clips_per_identity_test = 6 if tiny else 36
    c.data.clips_per_identity_val = 6  # monitoring and checkpoint selection (s1); the test split is final only
    c.data.clips_per_identity_wild = 6  # one clip per expression and person
    # people no stage trains on (the report's `openset` results): attackers train on the first half of each
    # person's clips and are scored on the second half
    c.data.num_openset_identities = 6 if tiny else 12
    c.data.clips_per_identity_openset = 6 if tiny else 24
    c.data.num_frames = 4 if tiny else 8  # paper: 16
    c.data.image_size = 32  # paper: 112
    c.data.num_expressions = 6  # anger, disgust, fear, happy, neutral, sad (CREMA-D)

    c.wavelet = ml_collections.ConfigDict()
    c.wavelet.name = "haar"  # paper: Haar
    c.wavelet.mode = "symmetric"
    c.wavelet.spatiotemporal = False  # paper: per-frame 2-D transform

    width = 8 if tiny else 16
    cls_width = 8  # ResNet/R3D widths: 8 keeps the whole default run within 10 min on 2 CPU cores
    c.model = ml_collections.ConfigDict()
    # Every spec's init_from: a `ppfer-jax convert` output directory to start that network from (e.g.
    # ImageNet ResNet-50 for the controllers, Kinetics R3D-18 for F_u, as the paper does); None: fresh init.
    # Privacy enhancers F_lpr / F_hpr. Paper: 64-1024 channel, depth-4 bilinear U-Net with a
    # sigmoid head, which cannot output a detail band's negative half. Ours: 'residual', the band plus a tanh-bounded
    # change (half the band's range at most) from a zero-initialised output conv, so an enhancer starts as the
    # identity map; a linear head ran to saturated colour under Algorithm 1, and 100 steps of L1 pretraining of a
    # tanh head left the detail bands blurred (L1 0.037, 0.023 after 600 steps; benchmarks/RESULTS.md).
    c.model.enhancer_low = dict(name="unet", features=width, depth=3, head="residual", out_range=(0.0, 2.0),
                                init_from=None)
    c.model.enhancer_high = dict(name="unet", features=width, depth=3, head="residual", out_range=(-1.0, 1.0),
                                 init_from=None)
    # Identity controllers C_lpr / C_hpr and validator V_pl. Paper: ResNet-50 at 112 px.
    c.model.identity_controller = dict(name="resnet18", width=cls_width, small_input=True, init_from=None)
    c.model.validator = dict(name="resnet18", width=cls_width, small_input=True, init_from=None)
    # Expression controller C_fc. Paper: ResNet-50 trained on DFEW frames.
    c.model.expression_controller = dict(name="resnet18", width=cls_width, small_input=True, init_from=None)
    # Feature compensator F_fc. Paper: U-ViT-H/2 from ImageNet-256 weights.
    c.model.compensator = dict(name="uvit", patch_size=4, embed_dim=32 if tiny else 64, depth=2 if tiny else 4,
                               num_heads=2 if tiny else 4, init_from=None)
    # Utility model F_u. Paper: R3D-18 (Kinetics-400 weights), width 64.
    c.model.utility = dict(name="r3d_18", width=cls_width, init_from=None)
    # ppfer_robust's band enhancers: code autoencoders (the band decoded from an 8-number code; ours, see
    # ppfer_jax/stages/robust_privacy.py), their MLP adversaries on the code and the code's expression head.
    c.model.update(code_enhancers(features=width, depth=2, code_dim=8))
    # `ppfer-jax reproduce` only: the whole-frame enhancer of the ablations without the wavelet (Tasks 1-3) and
    # of the trade-off baseline (the band enhancers' U-Net), and the threat model's recovery attacker (paper: a
    # full-scale U-Net, 64-1024 channels).
    c.model.enhancer_frame = dict(name="unet", features=width, depth=3, head="linear", out_range=(0.0, 1.0),
                                  init_from=None)
    c.model.recovery = dict(name="unet", features=width, depth=3, head="linear", out_range=(0.0, 1.0),
                            init_from=None)
    c.model.update(pprl_vgan(features=8 if tiny else 16))  # the PPRL-VGAN row; paper: 32
    # The adversarial CNN row (Narula et al.): its transformation; its emotion and identity CNNs are C_fc's and V_pl's
    # architectures. Ours: the abstract gives no architecture.
    c.model.narula_transformer = dict(name="unet", features=8, depth=2, head="residual", out_range=(0.0, 1.0),
                                      init_from=None)
    # The open-set method's suppression network (ours: the abstract gives none), starting as the identity map.
    c.model.open_set_suppressor = dict(name="unet", features=width, depth=3, head="residual", out_range=(0.0, 1.0),
                                       init_from=None)
    _method(c, tiny)
    return c


def _method(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """Sections of the PPFER stages: objective choices and each stage's schedule."""
    c.rng_impl = "rbg"  # PRNG of every key: rbg inits/compiles much faster than threefry on CPU
    c.update(parallelism(fsdp=1))  # one CPU device: nothing to shard; see configs/common.py

    c.privacy = ml_collections.ConfigDict()
    # Algorithm 1's objective for the enhancers against the frozen band controllers:
    # 'neg_ce' (paper: maximise CE, unbounded), 'entropy' (maximise predictive entropy),
    # 'kl_uniform' (minimise KL(uniform || p)); see ppfer_jax/losses.py. The paper's 'neg_ce' is the default
    # (unbounded: a NaN would stop the run); the objectives are compared in benchmarks/RESULTS.md.
    c.privacy.objective = "neg_ce"
    # s1's checkpoint: the eval step with the best fidelity (SSIM of G to the val frames) among those where a second
    # frozen frame validator, V_sel, reads at most ``selection_target`` x chance on val; before any does, the least
    # leaking one. (V_pl, the reported validator, never chooses.)
    c.privacy.selection_target = 1.0
    c.privacy.robust = robust_privacy(adversaries=2 if tiny else 3, restart_every=10 if tiny else 100,
                                      warmup_steps=2 if tiny else 300)

    c.compensation = ml_collections.ConfigDict()
    # F_fc(G) = G + U-ViT(G) with U-ViT's output layer zero-initialised, so F_fc starts as the identity map.
    # Paper: U-ViT-H/2 initialised from ImageNet-256 diffusion weights (no pretrained weights here).
    c.compensation.residual = True

    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.figure_clips = 2  # test clips shown in report.png (rows: original, low, high, G, C)

    t = c.train = ml_collections.ConfigDict()
    t.optimizer = "adam"  # or "sgd" (momentum 0.9); paper: not stated (official code: Adam)
    t.log_every = 10
    t.checkpoint_every = 200  # also where an interrupted stage resumes from
    # Utility-model training clips (s3/utility, no_privacy): random horizontal flip, +-max_shift px shift, and
    # the paper's random resized crop (area scale range, e.g. (0.8, 1.0); None: off, as +-2 px shifts slowed learning).
    t.augment = ml_collections.ConfigDict(dict(flip=True, max_shift=0, resized_crop_scale=None))
    t.loader_workers = 0  # grain worker processes per stage loader (0: in the main process; the set is in memory)
    t.eval_batch_size = 48 if tiny else 72

    # Paper: epochs, batch sizes and learning rates are not stated for any stage.
    # One random frame per clip per step for the frame classifiers; all T frames of each clip for the
    # enhancers, the compensator and the utility model.
    # The step counts fit the whole default run into 10 minutes on 2 CPU cores (benchmarks/RESULTS.md, "Where the
    # time of `ppfer-jax run` goes").
    t.pretrain_identity = stage(60 if tiny else 120, 32 if tiny else 64, 2e-3)     # C_lpr, C_hpr, V_pl, V_sel
    t.pretrain_enhancer = stage(10 if tiny else 100, 4 if tiny else 8, 2e-3)       # F_lpr, F_hpr (L1)
    t.pretrain_expression = stage(20 if tiny else 600, 32 if tiny else 64, 2e-3)   # C_fc on 'wild'
    # Alg. 1 at the official code's Adam 1e-4 (benchmarks/RESULTS.md: how V_pl falls over the steps).
    # (tiny: 10 steps at 1e-2, so that its anonymiser visibly acts from the identity start.)
    t.privacy = stage(10 if tiny else 450, 4 if tiny else 8, 1e-2 if tiny else 1e-4, eval_every=5 if tiny else 25)
    t.compensation = stage(10 if tiny else 100, 4 if tiny else 8, 1e-3)           # Alg. 2
    # F_u: 600 steps of 16 clips (17 epochs); shorter or smaller-batch schedules: benchmarks/RESULTS.md.
    t.utility = stage(10 if tiny else 600, 4 if tiny else 16, 1e-3, schedule="cosine")     # F_u on C
    t.no_privacy = stage(10 if tiny else 600, 4 if tiny else 16, 1e-3, schedule="cosine")  # F_u on raw clips
    t.adaptive_attack = stage(20 if tiny else 200, 32 if tiny else 64, 2e-3)      # fresh identity classifier
    t.clip_attack = stage(10 if tiny else 300, 4 if tiny else 16, 1e-3, schedule="cosine")  # fresh R3D on identity
    # people no stage saw (the report's `openset`): a fresh frame and clip attacker on the first half of each
    # person's (anonymised) clips, 12 a person: 100 steps of 64 frames is 44 passes over their clips
    t.openset_attack = stage(10 if tiny else 100, 32 if tiny else 64, 2e-3)
    t.openset_clip_attack = stage(5 if tiny else 150, 4 if tiny else 16, 1e-3, schedule="cosine")
    # ppfer_robust: 4 random frames of each of 36 clips per step, about 12 frames of each of the 12 people
    # stops once 3 evaluations in a row (300 steps) have not bettered the selected checkpoint
    t.robust_privacy = stage(10 if tiny else 1500, 12 if tiny else 36, 1e-3, eval_every=5 if tiny else 100,
                             patience=None if tiny else 3)

    # `ppfer-jax reproduce` (configs/common.py evaluation_suite; ppfer_jax/reproduce.py). Paper: not stated.
    # sigma in px at 32 px frames (16: little but the mean colour is left); 2 px per frame of flow is full brightness.
    c.update(evaluation_suite(sigma_range=(0.0, 16.0), flow_max_magnitude=2.0, acc_evaluations=2 if tiny else 5,
                              narula_phase_steps=(2, 2, 2) if tiny else (100, 50, 50)))
    t.pretrain_frame_controller = stage(20 if tiny else 200, 32 if tiny else 64, 2e-3)  # C_pr on frames (Tasks 1, 3)
    t.pretrain_frame_enhancer = stage(10 if tiny else 100, 4 if tiny else 8, 2e-3)  # F_pr / trade-off anonymiser, L1
    t.joint = stage(10 if tiny else 200, 4 if tiny else 8, 1e-3)     # Tasks 2, 6: enhancers + F_u, expression CE
    t.tradeoff = stage(10 if tiny else 200, 4 if tiny else 8, 1e-3)  # trade-off baseline, alternating updates
    t.recovery = stage(10 if tiny else 300, 4 if tiny else 4, 1e-3)  # threat model: U-Net, L1, all frames of a clip
    # the open-set verification check's face embedding (V_pl's architecture) on the wild people's identities
    t.pretrain_recognition = stage(60 if tiny else 300, 32 if tiny else 64, 2e-3)
    # the open-set method: its recognition prior on the wild people, suppression (2 frames of 16 clips), denoising
    t.open_set_prior = stage(20 if tiny else 300, 32 if tiny else 64, 2e-3)
    t.open_set_suppress = stage(10 if tiny else 600, 8 if tiny else 16, 1e-3)
    t.open_set_denoise = stage(10 if tiny else 150, 4 if tiny else 8, 1e-3)
    t.narula = stage(12 if tiny else 600, 4 if tiny else 8, 1e-3)  # 2 / 3 rounds of the adversarial CNN's phases
    t.narula_reference = stage(10 if tiny else 200, 32 if tiny else 64, 2e-3)  # its emotion-only, identity-only CNNs
    # PPRL-VGAN: RMSprop 3e-4 (theirs), 4 clips = 32 frames a step; at 800 steps it still drew colour noise
    t.pprl_vgan = stage(10 if tiny else 2400, 4, 3e-4)
