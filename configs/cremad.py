"""CREMA-D at the paper's sizes: 91 actors, 6 expressions, 16 frames, ResNet-50, R3D-18, U-ViT-H/2.

Usage: ``ppfer-jax run --config configs/cremad.py`` (112 px, the paper's clip size for
R3D-18) or ``configs/cremad.py:224``. The data set is prepared from the user's own
download (``ppfer-jax prepare cremad``); nothing is fetched from the network.
"""

import ml_collections

from configs.common import code_enhancers, evaluation_suite, parallelism, pprl_vgan, robust_privacy, stage


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    image_size = int(arg or 112)
    if image_size not in (112, 224):
        raise ValueError(f"configs/cremad.py takes the image size 112 or 224 as arg, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "bfloat16"  # compute dtype on accelerators; params and optimizer state stay float32

    c.data = ml_collections.ConfigDict()
    c.data.name = "cremad"
    c.data.data_dir = "~/tensorflow_datasets"  # where `ppfer-jax prepare cremad` wrote the TFDS set
    c.data.num_identities = 91
    c.data.num_expressions = 6
    # Held out of the train split for monitoring and checkpoint selection (the paper has train and test only;
    # selecting on test would flatter every row).
    c.data.val_fraction = 0.05
    c.data.num_frames = 16  # the paper's code samples 16 frames with stride n // 16
    c.data.image_size = image_size
    c.data.wild_name = "dfew"  # expression-controller pretraining set (paper: 3,600 DFEW clips)
    c.data.tfds_name = f"cremad/{image_size}"  # what `ppfer-jax prepare cremad --image_size N` builds in data_dir
    # C_fc's frames: `ppfer-jax prepare dfew --one_random_frame --image_size N` (official fold 1's train split)
    c.data.wild_tfds_name = f"dfew/fold1-{image_size}-frame"

    c.wavelet = ml_collections.ConfigDict()
    c.wavelet.name = "haar"
    c.wavelet.mode = "symmetric"
    c.wavelet.spatiotemporal = False

    c.model = ml_collections.ConfigDict()
    # Every spec's init_from: a `ppfer-jax convert` output directory to start that network from (e.g.
    # ImageNet ResNet-50 for the controllers, Kinetics R3D-18 for F_u, as the paper does); None: fresh init.
    # Paper's code: milesial U-Net (bilinear, 64-1024) with a sigmoid head on both bands. Ours: the same
    # U-Net with a 'residual' head (band + bounded change, starting as the identity map; see configs/synthetic.py),
    # because a sigmoid cannot output the detail bands' negative half and a linear head ran to saturated colour.
    c.model.enhancer_low = dict(name="unet", features=64, depth=4, head="residual", out_range=(0.0, 2.0),
                                init_from=None)
    c.model.enhancer_high = dict(name="unet", features=64, depth=4, head="residual", out_range=(-1.0, 1.0),
                                 init_from=None)
    c.model.identity_controller = dict(name="resnet50", width=64, small_input=False, init_from=None)
    c.model.validator = dict(name="resnet50", width=64, small_input=False, init_from=None)
    c.model.expression_controller = dict(name="resnet50", width=64, small_input=False, init_from=None)
    # Paper: U-ViT-H/2 (ImageNet 256x256 weights, which work on 32x32x4 autoencoder latents: 16x16 = 256 tokens).
    # Here it runs on 112 px frames directly; patch 7 gives the same 256 tokens per frame. (Patch 2 would give
    # 3136: 269 TFLOP and, by XLA's estimate, about 1 TB per training step of one 16-frame clip.)
    c.model.compensator = dict(name="uvit", size="H", patch_size=7, remat=True, init_from=None)
    c.model.utility = dict(name="r3d_18", width=64, remat=False, init_from=None)
    # ppfer_robust (ours): per-band code autoencoders, 56 px bands to a 7x7 map and a 32-number code each.
    c.model.update(code_enhancers(features=64, depth=3, code_dim=32))
    # `ppfer-jax reproduce`: the whole-frame enhancer (ablations Tasks 1-3, trade-off anonymiser) and the recovery
    # attacker, both the paper's full-scale U-Net.
    c.model.enhancer_frame = dict(name="unet", features=64, depth=4, head="linear", out_range=(0.0, 1.0),
                                  init_from=None)
    c.model.recovery = dict(name="unet", features=64, depth=4, head="linear", out_range=(0.0, 1.0), init_from=None)
    c.model.update(pprl_vgan(features=32))  # the PPRL-VGAN row, its published widths
    c.model.narula_transformer = dict(name="unet", features=32, depth=4, head="residual", out_range=(0.0, 1.0),
                                      init_from=None)  # the adversarial CNN row's transformation (ours)

    c.rng_impl = "threefry2x32"  # PRNG of every key (the synthetic CPU config uses 'rbg' for compile speed)
    c.update(parallelism(fsdp=1))  # --config.mesh.fsdp=N splits params and optimizer state over N devices
    c.privacy = ml_collections.ConfigDict()
    c.privacy.objective = "neg_ce"  # the paper's
    c.privacy.selection_target = 2.0  # s1's checkpoint: see configs/synthetic.py
    c.privacy.robust = robust_privacy(adversaries=4, restart_every=500, warmup_steps=1000)
    c.compensation = ml_collections.ConfigDict()
    c.compensation.residual = True  # F_fc = G + U-ViT(G), zero-init output (paper: ImageNet U-ViT-H/2 weights)
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.figure_clips = 4

    t = c.train = ml_collections.ConfigDict()
    t.optimizer = "adam"  # or "sgd" (momentum 0.9); paper: not stated (official code: Adam)
    t.log_every = 50
    t.checkpoint_every = 1000
    t.eval_batch_size = 32
    # F_u's training clips: flips and the paper's random resized crop (0.8-1.0 of the area), on uint8 in the loader.
    t.augment = ml_collections.ConfigDict(dict(flip=True, max_shift=0, resized_crop_scale=(0.8, 1.0)))
    t.loader_workers = 4  # grain worker processes per loader (benchmarks/loader_throughput.py)

    # Paper: epochs (N_1, N_2), batch sizes and learning rates are not stated for any stage; these are ours,
    # unmeasured at this size (about 20-30 epochs of the 5,210 training clips per stage).
    t.pretrain_identity = stage(5000, 64, 1e-3)
    t.pretrain_enhancer = stage(3000, 8, 1e-3)
    t.pretrain_expression = stage(3000, 64, 1e-3)
    t.privacy = stage(5000, 8, 1e-4, eval_every=500)
    t.compensation = stage(20000, 2, 1e-4)  # 2 clips = 32 frames: what fits one 80 GB GPU (benchmarks/RESULTS.md)
    t.utility = stage(10000, 16, 1e-3, schedule="cosine")
    t.no_privacy = stage(10000, 16, 1e-3, schedule="cosine")
    t.adaptive_attack = stage(5000, 64, 1e-3)
    t.clip_attack = stage(5000, 16, 1e-3, schedule="cosine")
    t.robust_privacy = stage(5000, 64, 1e-3, eval_every=500)
    # `ppfer-jax reproduce` (configs/common.py evaluation_suite): sigma in px at 112 px frames.
    c.update(evaluation_suite(sigma_range=(0.0, 48.0), flow_max_magnitude=4.0, narula_phase_steps=(1000, 500, 500)))
    t.pretrain_frame_controller = stage(5000, 64, 1e-3)
    t.pretrain_frame_enhancer = stage(3000, 8, 1e-3)
    t.joint = stage(5000, 8, 1e-4)
    t.tradeoff = stage(5000, 8, 1e-4)
    t.recovery = stage(5000, 8, 1e-3)
    t.pprl_vgan = stage(5000, 8, 3e-4)
    t.narula = stage(6000, 8, 1e-4)
    t.narula_reference = stage(5000, 64, 1e-3)
    return c
