"""PyTorch -> Flax conversion: each model's converted weights give the torch model's outputs (eval mode).

References: torchvision's resnet18 / resnet50 / r3d_18 with random init, and a milesial-layout
U-Net and a U-ViT written here in plain PyTorch from their papers' definitions. Every torch
model gets non-trivial BatchNorm statistics first, so eval-mode BatchNorm is exercised.
Skipped when torch is not installed (``pip install '.[torch]'``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax import cli, convert
from ppfer_jax.models import build_model

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
tnn = torch.nn
F = torch.nn.functional


# -- plain-PyTorch references for the two models torchvision does not have


class DoubleConv(tnn.Sequential):
    def __init__(self, cin, cout, mid=None):
        mid = mid or cout
        super().__init__()
        self.double_conv = tnn.Sequential(tnn.Conv2d(cin, mid, 3, padding=1, bias=False), tnn.BatchNorm2d(mid),
                                          tnn.ReLU(), tnn.Conv2d(mid, cout, 3, padding=1, bias=False),
                                          tnn.BatchNorm2d(cout), tnn.ReLU())


class Down(tnn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = tnn.Sequential(tnn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(tnn.Module):
    def __init__(self, cin, cout, bilinear):
        super().__init__()
        if bilinear:
            self.up = tnn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin, cout, cin // 2)
        else:
            self.up = tnn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class TorchUNet(tnn.Module):
    """U-Net (Ronneberger et al.) in the milesial layout: depth 2 here."""

    def __init__(self, cin, cout, f, bilinear):
        super().__init__()
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(cin, f)
        self.down1, self.down2 = Down(f, 2 * f), Down(2 * f, 4 * f // factor)
        self.up1, self.up2 = Up(4 * f, 2 * f // factor, bilinear), Up(2 * f, f, bilinear)
        self.outc = tnn.Module()
        self.outc.conv = tnn.Conv2d(f, cout, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x = self.up2(self.up1(self.down2(x2), x2), x1)
        return self.outc.conv(x)


class Block(tnn.Module):
    def __init__(self, dim, heads, skip=False):
        super().__init__()
        self.heads = heads
        self.skip_linear = tnn.Linear(2 * dim, dim) if skip else None
        self.norm1, self.norm2 = tnn.LayerNorm(dim), tnn.LayerNorm(dim)
        self.attn = tnn.Module()
        self.attn.qkv, self.attn.proj = tnn.Linear(dim, 3 * dim, bias=False), tnn.Linear(dim, dim)
        self.mlp = tnn.Module()
        self.mlp.fc1, self.mlp.fc2 = tnn.Linear(dim, 4 * dim), tnn.Linear(4 * dim, dim)

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.attn.proj((attention @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TorchUViT(tnn.Module):
    """U-ViT (Bao et al.): time and label tokens, long skips, a 3x3 conv after unpatchify."""

    def __init__(self, size, patch, channels, dim, depth, heads, num_classes):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.patch_embed = tnn.Module()
        self.patch_embed.proj = tnn.Conv2d(channels, dim, patch, stride=patch)
        self.time_embed = tnn.Sequential(tnn.Linear(dim, 4 * dim), tnn.SiLU(), tnn.Linear(4 * dim, dim))
        self.label_emb = tnn.Embedding(num_classes, dim)
        self.pos_embed = tnn.Parameter(0.02 * torch.randn(1, 2 + (size // patch) ** 2, dim))
        self.in_blocks = tnn.ModuleList([Block(dim, heads) for _ in range(depth // 2)])
        self.mid_block = Block(dim, heads)
        self.out_blocks = tnn.ModuleList([Block(dim, heads, skip=True) for _ in range(depth // 2)])
        self.norm, self.decoder_pred = tnn.LayerNorm(dim), tnn.Linear(dim, patch * patch * channels)
        self.final_layer = tnn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, t, y):
        b, c, h, w = x.shape
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        time = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        x = torch.cat([self.label_emb(y)[:, None], time[:, None], x], dim=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, 2:]
        p, gh, gw = self.patch, h // self.patch, w // self.patch
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.final_layer(x)


# -- helpers


def _with_running_stats(model, x):
    """A few train-mode forwards so BatchNorm's running statistics are far from (0, 1); then eval mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for scale in (1.0, 2.0, 3.0):
            model(x * scale + 0.5)
    return model.eval()


def _convert(model_name, torch_model, flax_model, x_flax, tmp_path):
    """Saves torch_model's state dict as a .pth file, then converts it back through load_torch_state_dict."""
    path = tmp_path / "model.pth"
    torch.save(torch_model.state_dict(), path)
    target = jax.eval_shape(flax_model.init, jax.random.key(0), x_flax)
    return convert.torch_to_flax(convert.load_torch_state_dict(path), model_name, target)


CASES = {
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=10), build_model({"name": "resnet18"},
                                                                                    num_classes=10), (2, 3, 64, 64)),
    "resnet50": lambda: (torchvision.models.resnet50(num_classes=10), build_model({"name": "resnet50"},
                                                                                    num_classes=10), (2, 3, 64, 64)),
    "r3d_18": lambda: (torchvision.models.video.r3d_18(num_classes=7), build_model({"name": "r3d_18"},
                                                                                     num_classes=7), (2, 3, 4, 32, 32)),
    "unet_bilinear": lambda: (TorchUNet(9, 9, 8, True),
                              build_model({"name": "unet", "features": 8, "depth": 2}, out_channels=9),
                              (2, 9, 17, 17)),
    "unet_transposed": lambda: (TorchUNet(3, 3, 8, False), build_model(
        {"name": "unet", "features": 8, "depth": 2, "bilinear": False}, out_channels=3), (2, 3, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_model_matches_torch_in_eval_mode(case, tmp_path):
    torch_model, flax_model, shape = CASES[case]()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    _with_running_stats(torch_model, x)
    x_flax = jnp.asarray(np.moveaxis(x.numpy(), 1, -1))
    variables = _convert(case.split("_")[0] if case.startswith("unet") else case, torch_model, flax_model, x_flax,
                         tmp_path)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = np.asarray(flax_model.apply(variables, x_flax, train=False))
    if expected.ndim > 2:  # images: NCHW -> NHWC
        expected = np.moveaxis(expected, 1, -1)
    assert np.max(np.abs(got - expected)) <= 1e-4, np.max(np.abs(got - expected))


def test_converted_uvit_matches_torch(tmp_path):
    torch.manual_seed(0)
    torch_model = TorchUViT(16, 4, 3, 32, 4, 4, num_classes=5).eval()
    flax_model = build_model({"name": "uvit", "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 4,
                              "mlp_time_embed": True, "num_classes": 5}, img_size=16, in_channels=3)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_flax = jnp.asarray(np.moveaxis(x.numpy(), 1, -1))
    variables = _convert("uvit", torch_model, flax_model, x_flax, tmp_path)
    with torch.no_grad():
        expected = np.moveaxis(torch_model(x, torch.full((2,), 3.0), torch.tensor([1, 4])).numpy(), 1, -1)
    got = np.asarray(flax_model.apply(variables, x_flax, timesteps=3.0, labels=jnp.asarray([1, 4])))
    assert np.max(np.abs(got - expected)) <= 1e-4, np.max(np.abs(got - expected))


def _resnet18_target():
    return jax.eval_shape(build_model({"name": "resnet18"}, num_classes=10).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))


def test_missing_and_misshaped_keys_are_named():
    state = {k: v.numpy() for k, v in torchvision.models.resnet18(num_classes=10).state_dict().items()}
    missing = dict(state)
    del missing["layer2.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing from the checkpoint: batch_stats/stage2_block0/bn1/var"):
        convert.torch_to_flax(missing, "resnet18", _resnet18_target())
    misshaped = {**state, "layer3.1.conv2.weight": np.zeros((256, 256, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"mis-shaped: layer3\.1\.conv2\.weight \(256, 256, 1, 1\)"):
        convert.torch_to_flax(misshaped, "resnet18", _resnet18_target())
    extra = {**state, "fc2.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"not used by resnet18: fc2\.weight"):
        convert.torch_to_flax(extra, "resnet18", _resnet18_target())


def test_another_class_count_gets_a_fresh_head_and_keeps_the_rest(capsys):
    state = {k: v.numpy() for k, v in torchvision.models.resnet18(num_classes=1000).state_dict().items()}
    target = jax.jit(build_model({"name": "resnet18"}, num_classes=10).init)(jax.random.key(0),
                                                                              jnp.zeros((1, 32, 32, 3)))
    variables = convert.torch_to_flax(state, "resnet18", target)
    assert "replaced by a fresh (512, 10) head" in capsys.readouterr().out
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], target["params"]["head"]["kernel"])
    np.testing.assert_array_equal(variables["params"]["stem_conv"]["kernel"],
                                  np.transpose(state["conv1.weight"], (2, 3, 1, 0)))


@pytest.mark.slow  # a paper-size ResNet-50 through the stage code
def test_converted_resnet50_through_init_from_gives_the_torch_logits_inside_the_stage_code(tmp_path):
    """`ppfer-jax convert` then config model.validator.init_from: V_pl starts as the torch model."""
    from ppfer_jax.config import load_config
    from ppfer_jax.nets import Nets

    torch_model = torchvision.models.resnet50(num_classes=6)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    _with_running_stats(torch_model, x)
    torch.save(torch_model.state_dict(), tmp_path / "r50.pth")
    assert cli.main(["convert", str(tmp_path / "r50.pth"), "--model", "resnet50", "--num-classes", "6",
                     "--out", str(tmp_path / "r50")]) == 0
    config = load_config("configs/synthetic.py:tiny", [
        "model.validator.name=resnet50", "model.validator.width=64", "model.validator.small_input=False",
        f"model.validator.init_from={tmp_path / 'r50'}", "data.num_identities=6"])
    nets = Nets(config)
    variables = nets.pretrained("v_pl")
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = np.asarray(nets.apply("v_pl", variables, jnp.asarray(np.moveaxis(x.numpy(), 1, -1))))
    assert np.max(np.abs(got - expected)) <= 1e-4
    # A directory that does not fit the configured model is refused by name.
    config.model.validator.name = "resnet18"
    with pytest.raises(ValueError, match="does not fit the configured model"):
        Nets(config).pretrained("v_pl")
