"""The DAM-Net generator: Siamese ConvNeXt-V2 encoder, Multi-Temporal Transformer, FPN decoder.

``ChangeNet(pre, post)`` maps two (B, 3, H, W) images (H, W divisible by 32) to change
logits (B, 2, H, W): class 0 no change, class 1 change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from damnet.models.backbone import ConvNeXtV2Encoder, LayerNorm2d

#: Per-channel input normalisation of 0..1 images (fixed, so no statistics of any domain leak in).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 images -> float 0..1 (the only input convention)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 images -> normalised float."""
    return (to_unit(x) - mean) / std


@dataclass(frozen=True)
class ModelConfig:
    dims: tuple[int, ...] = (24, 48, 96, 192)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    mtt_stages: tuple[int, ...] = (3,)  #: encoder stages (0-3) fused by the MTT
    mtt_depth: int = 1
    mtt_heads: int = 4
    fusion: str = "diffsum"  #: "diffsum": concat(|f1-f2|, f1+f2); "diff": |f1-f2|; "concat"
    decoder_dim: int = 32
    drop_path: float = 0.0
    dropout: float = 0.1  #: before the classifier; also the MC-dropout of the selector
    disc_channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on 2 CPU cores.
    "tiny": ModelConfig(),
    # For GPUs: ConvNeXt-V2-tiny widths, a deeper MTT on the two deepest stages.
    "base": ModelConfig(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), mtt_stages=(2, 3),
                        mtt_depth=2, mtt_heads=8, decoder_dim=128, drop_path=0.1,
                        disc_channels=64),
}


def preset(name: str, **overrides) -> ModelConfig:
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
    return ModelConfig(**{**asdict(base), **overrides})


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (h * w, dim); works for any grid size."""
    if dim % 4:
        raise ValueError(f"position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    out_y = ys.reshape(-1, 1) * omega
    out_x = xs.reshape(-1, 1) * omega
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)


class MultiTemporalTransformer(nn.Module):
    """Joint space-time self-attention over the tokens of both dates.

    (B, C, H, W) x 2 -> (B, C, H, W) x 2. Tokens get a 2-D position embedding and a learned
    date embedding, are concatenated (2HW tokens), pass ``depth`` pre-norm layers, and are
    split back per date (residual to the input features).
    """

    def __init__(self, dim: int, depth: int = 1, heads: int = 4, mlp_ratio: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.date = nn.Parameter(torch.randn(2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = f1.shape
        pos = sincos_2d(h, w, c, f1.device).to(f1.dtype)
        t1 = f1.flatten(2).transpose(1, 2) + pos + self.date[0]
        t2 = f2.flatten(2).transpose(1, 2) + pos + self.date[1]
        x = self.norm(self.layers(torch.cat([t1, t2], dim=1)))
        o1, o2 = x[:, : h * w], x[:, h * w :]
        back = lambda t: t.transpose(1, 2).reshape(b, c, h, w)  # noqa: E731
        return f1 + back(o1), f2 + back(o2)


class Fusion(nn.Module):
    """Per-scale change feature from the two dates' features."""

    def __init__(self, dim: int, out: int, mode: str) -> None:
        super().__init__()
        if mode not in ("diffsum", "diff", "concat"):
            raise ValueError(f"unknown fusion {mode!r}")
        self.mode = mode
        width = dim if mode == "diff" else 2 * dim
        self.proj = nn.Sequential(nn.Conv2d(width, out, 1), LayerNorm2d(out), nn.GELU())

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        if self.mode == "diffsum":
            x = torch.cat([(f1 - f2).abs(), f1 + f2], dim=1)
        elif self.mode == "diff":
            x = (f1 - f2).abs()
        else:
            x = torch.cat([f1, f2], dim=1)
        return self.proj(x)


def identity_lut() -> torch.Tensor:
    """(2 dates, 3 bands, 256) uint8 tables that leave the input as it is."""
    return torch.arange(256, dtype=torch.uint8).repeat(2, 3, 1)


class ChangeNet(nn.Module):
    """The generator G of DAM-Net.

    ``input_lut`` (saved with the weights): per date and band, the table the model reads its
    uint8 input through (damnet.radiometry: the region's histograms matched to the source's);
    the identity unless :meth:`set_input_lut` set one. Training reads labelled source batches
    without it (``aligned=True`` after applying it to the region's batches itself).
    """

    mean: torch.Tensor  #: (1, 3, 1, 1) buffer, see :func:`normalise`
    std: torch.Tensor
    input_lut: torch.Tensor

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.encoder = ConvNeXtV2Encoder(config.dims, config.depths, config.drop_path)
        self.mtt = nn.ModuleDict({
            str(i): MultiTemporalTransformer(config.dims[i], config.mtt_depth, config.mtt_heads)
            for i in config.mtt_stages
        })
        d = config.decoder_dim
        self.fuse = nn.ModuleList(Fusion(c, d, config.fusion) for c in config.dims)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, d, 3, padding=1), LayerNorm2d(d), nn.GELU())
            for _ in config.dims[:-1]
        )
        self.head = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.GELU())
        self.dropout = nn.Dropout2d(config.dropout)
        self.classifier = nn.Conv2d(d, 2, 1)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_lut", identity_lut())
        self.matching = False  #: whether input_lut is other than the identity
        self._register_load_state_dict_pre_hook(_lut_default, with_module=True)
        self.register_load_state_dict_post_hook(_lut_loaded)

    def set_input_lut(self, lut: torch.Tensor) -> None:
        """Read uint8 inputs through ``lut`` (2, 3, 256) from now on (the identity: as they are)."""
        if tuple(lut.shape) != (2, 3, 256):
            raise ValueError(f"an input table is (2 dates, 3 bands, 256 values), got {tuple(lut.shape)}")
        self.input_lut.copy_(lut.to(torch.uint8))
        self.matching = not torch.equal(self.input_lut.cpu(), identity_lut())

    @contextlib.contextmanager
    def tables_off(self) -> Iterator[ChangeNet]:
        """Inside: read inputs as they are, not through the region's input tables (for imagery of
        another region, e.g. the source holdout, which already has the source's radiometry)."""
        matching, self.matching = self.matching, False
        try:
            yield self
        finally:
            self.matching = matching

    def align(self, pre: torch.Tensor, post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre`` and ``post`` (uint8) through the input tables (as they are without any)."""
        if not self.matching:
            return pre, post
        from damnet.radiometry import apply_lut

        return apply_lut(pre, self.input_lut[0]), apply_lut(post, self.input_lut[1])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.mean, self.std)

    def change_features(self, pre: torch.Tensor, post: torch.Tensor, aligned: bool = False) -> list[torch.Tensor]:
        """Fused change features per scale (strides 4, 8, 16, 32), ``decoder_dim`` channels;
        ``aligned``: the inputs went through the input tables already (or must not)."""
        h, w = pre.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"input size {h}x{w} must be divisible by 32")
        if not aligned:
            pre, post = self.align(pre, post)
        both = self.encoder(torch.cat([self.normalise(pre), self.normalise(post)], dim=0))
        out = []
        for i, f in enumerate(both):
            f1, f2 = f.chunk(2, dim=0)
            if str(i) in self.mtt:
                f1, f2 = self.mtt[str(i)](f1, f2)
            out.append(self.fuse[i](f1, f2))
        return out

    def decode(self, feats: list[torch.Tensor], size) -> torch.Tensor:
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](x + feats[i])
        x = self.head(x)
        x = self.classifier(self.dropout(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, pre: torch.Tensor, post: torch.Tensor, aligned: bool = False) -> torch.Tensor:
        return self.decode(self.change_features(pre, post, aligned), pre.shape[-2:])

    def embed(self, pre: torch.Tensor, post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and a pooled descriptor per image (for diversity-aware selection)."""
        feats = self.change_features(pre, post)
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats[-2:]], dim=1)
        return self.decode(feats, pre.shape[-2:]), pooled


def _lut_default(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Checkpoints from before input tables existed read their inputs as they are."""
    state_dict.setdefault(prefix + "input_lut", identity_lut())


def _lut_loaded(module: nn.Module, incompatible: object) -> None:
    if isinstance(module, ChangeNet):
        module.matching = not torch.equal(module.input_lut.cpu(), identity_lut())


class SegDiscriminator(nn.Module):
    """Fully convolutional domain discriminator on the change-probability map.

    (B, C_in, H, W) -> (B, 1, H / 32, W / 32) logits: one domain decision per receptive field
    (source = 0, target = 1). Five 4x4 stride-2 convolutions, LeakyReLU 0.2.
    """

    def __init__(self, in_channels: int = 2, channels: int = 64) -> None:
        super().__init__()
        widths = [in_channels, channels, channels * 2, channels * 4, channels * 8]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: What the discriminator looks at: the softmax map, softmax + normalised entropy, or the
#: weighted self-information map -p log p of both classes (as in ADVENT).
DISC_INPUTS = {"softmax": 2, "softmax+entropy": 3, "self_info": 2}


def discriminator_input(logits: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """The (B, C, H, W) map the discriminator sees for change logits (B, 2, H, W)."""
    p = logits.float().softmax(dim=1)
    if kind == "softmax":
        return p
    info = -(p * torch.log(p.clamp_min(1e-8))) / math.log(2)
    if kind == "self_info":
        return info
    if kind == "softmax+entropy":
        return torch.cat([p, info.sum(1, keepdim=True)], dim=1)
    raise ValueError(f"unknown discriminator input {kind!r}; known: {', '.join(DISC_INPUTS)}")


class MAE(nn.Module):
    """Masked-autoencoder pretraining of the encoder on unlabelled single-date images.

    Random 32x32 patches are zeroed (``mask_ratio``); a light decoder predicts the pixels of
    every patch from the stride-32 features; the loss is the MSE on masked patches against
    per-patch normalised targets (as in MAE / ConvNeXt-V2 FCMAE).
    """

    mean: torch.Tensor  #: (1, 3, 1, 1) buffer, see :func:`normalise`
    std: torch.Tensor

    def __init__(self, encoder: ConvNeXtV2Encoder, mask_ratio: float = 0.6, patch: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.patch = patch
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.dims[-1], encoder.dims[-1], 1), nn.GELU(),
            nn.Conv2d(encoder.dims[-1], 3 * patch * patch, 1),
        )
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Loss for a batch of (B, 3, H, W) images (uint8 or 0..1 float)."""
        x = normalise(x, self.mean, self.std)
        b, _, h, w = x.shape
        gh, gw = h // self.patch, w // self.patch
        mask = (torch.rand(b, 1, gh, gw, generator=generator, device="cpu") < self.mask_ratio)
        mask = mask.to(x.device, x.dtype)
        pix_mask = F.interpolate(mask, scale_factor=self.patch, mode="nearest")
        pred = F.pixel_shuffle(self.decoder(self.encoder(x * (1 - pix_mask))[-1]), self.patch)
        # Per-patch normalised targets.
        t = F.unfold(x, self.patch, stride=self.patch)  # (B, 3*p*p, L)
        t = (t - t.mean(1, keepdim=True)) / (t.var(1, keepdim=True) + 1e-6).sqrt()
        target = F.fold(t, (h, w), self.patch, stride=self.patch)
        err = ((pred - target) ** 2).mean(1, keepdim=True)
        return (err * pix_mask).sum() / pix_mask.sum().clamp_min(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(model: ChangeNet, size: int = 256) -> int:
    """Forward FLOPs of one (pre, post) pair of ``size`` x ``size``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, x)
    model.train(was)
    return int(counter.get_total_flops())
