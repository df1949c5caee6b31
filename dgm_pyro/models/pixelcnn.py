"""A gated PixelCNN decoder (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"),
conditioned on a context c = [z, y]: the strong autoregressive decoder of seed P3.4 at image scale.

    p(x | c) = prod_{i,j} p(x_ij | x_<ij, c)          raster order over an H x W image

Each layer has a vertical stack (the rows above, through a (k//2 + 1) x k convolution) and a horizontal stack
(the pixels to the left in the same row, through a 1 x (k//2 + 1) convolution); the vertical features reach the
horizontal stack shifted down one row, so nothing at or after pixel (i, j) in raster order reaches its output, and
together the stacks leave no blind spot. Every stack computes the gated unit tanh(W_f * v + V_f c) * sigmoid(W_g
* v + V_g c). The context enters every layer either as a per-channel bias (``conditioning="global"``: V c, the
same at every pixel) or as a map over the image (``"spatial"``: s = m(c), a transposed-convolutional network of the
context to ``channels`` maps of H x W, entering each layer through a 1 x 1 convolution V * s; van den Oord et al.'s
location-dependent conditioning, the way PixelVAE, Gulrajani et al. 2017, decodes z). A global bias cannot say
where a stroke is, so a decoder that sees few rows can use z only through a spatial map (which also tells each
pixel its position). The first layer's horizontal convolution sees the row shifted right by one pixel (mask A: not
the pixel itself). The receptive field grows with the layers:
with ``layers=L`` and ``kernel=k`` a pixel sees L * (k // 2) + 1 rows above it, so fewer layers restrict it (a remedy
of seed P3.5: Chen et al. 2017, Gulrajani et al. 2017).

One forward pass gives every conditional for an observed x (teacher forcing); sampling fills the image pixel by
pixel (H * W passes), batched over samples, through
:class:`~dgm_pyro.models.autoregressive.AutoregressiveLikelihood`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .nn import ConvDecoder

__all__ = ["GatedPixelCNN", "CONDITIONINGS"]

#: how the context enters the gated layers: a per-channel bias, or a map over the image
CONDITIONINGS = ("global", "spatial")


def _gate(a: torch.Tensor) -> torch.Tensor:
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class _GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, context_features: int, first: bool,
                 spatial: bool = False):
        super().__init__()
        self.k, self.first, self.spatial = kernel, first, spatial
        half = kernel // 2
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel))
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, half + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.context: nn.Module | None = None
        if context_features:  # V c for a context vector, V * s (1 x 1) for a context map s of that many maps
            self.context = (nn.Conv2d(context_features, 4 * channels, 1) if spatial
                            else nn.Linear(context_features, 4 * channels))

    def forward(self, v: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.k // 2
        v_pre = self.v_conv(F.pad(v, (half, half, half, 0)))  # rows i - k//2 .. i, columns j - k//2 .. j + k//2
        h_in = F.pad(h, (1, 0))[..., :-1] if self.first else h  # mask A: the first layer does not see x_ij
        h_pre = self.h_conv(F.pad(h_in, (half, 0)))  # columns j - k//2 .. j of this row
        h_pre = h_pre + self.v_to_h(F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1])  # the vertical stack, one row down
        if self.context is not None:
            cv, ch = (self.context(c) if self.spatial else self.context(c)[:, :, None, None]).chunk(2, dim=1)
            v_pre, h_pre = v_pre + cv, h_pre + ch
        h_new = self.h_out(_gate(h_pre))
        return _gate(v_pre), h_new if self.first else h + h_new


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over images ``image_shape`` = (H, W), conditioned on a context vector.

    Args:
        image_shape: (H, W); x is the image flattened in raster order (x_dim = H * W).
        context_dim: dimension of the context c (z and y; 0 for none: a PixelCNN without z).
        channels: feature maps of each stack.
        layers: gated layers (receptive field: layers * (kernel // 2) + 1 rows above each pixel, and
            layers * (kernel // 2) + 1 pixels to its left).
        kernel: k of the vertical (k//2 + 1) x k and horizontal 1 x (k//2 + 1) convolutions (odd, >= 3).
        out_per_pixel: outputs per pixel (1: Bernoulli logits; ``levels``: categorical logits).
        conditioning: ``"global"`` (the context as a per-channel bias of every layer) or ``"spatial"`` (as a
            map over the image, through a :class:`~dgm_pyro.models.nn.ConvDecoder` of ``context_hidden`` units;
            H and W multiples of 4). A spatial map also tells each pixel where it is; without a context
            (``context_dim=0``) the map is a learned parameter, so the PixelCNN without z keeps that knowledge.
        context_hidden: hidden units of the spatial conditioning's network.
    Returns (forward): (..., H * W * out_per_pixel), pixel-major, like :class:`~dgm_pyro.models.autoregressive.MADE`.
    """

    def __init__(self, image_shape: Sequence[int], context_dim: int, channels: int = 16, layers: int = 5,
                 kernel: int = 3, out_per_pixel: int = 1, conditioning: str = "global", context_hidden: int = 256):
        super().__init__()
        if len(image_shape) != 2:
            raise ValueError(f"the PixelCNN decoder needs images (H, W), got shape {tuple(image_shape)}")
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 3, got {kernel}")
        if layers < 1 or channels < 1:
            raise ValueError("layers and channels must be >= 1")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got '{conditioning}'")
        self.h, self.w = int(image_shape[0]), int(image_shape[1])
        self.x_dim, self.context_dim, self.out_per_pixel = self.h * self.w, context_dim, out_per_pixel
        spatial = conditioning == "spatial"
        # s = m(c): (B, context_dim) -> (B, channels * H * W), channel by channel; without a context, s is a learned
        # map of its own (a bias per pixel: the position a spatial map of z also tells, the reference without z)
        self.context_map = ConvDecoder(context_dim, image_shape, context_hidden, channels) if spatial and context_dim \
            else None
        self.position = nn.Parameter(torch.zeros(1, channels, self.h, self.w)) if spatial and not context_dim else None
        context_features = channels if spatial else context_dim  # a spatial map always exists: z's or the position
        self.layers = nn.ModuleList([_GatedLayer(1 if i == 0 else channels, channels, kernel, context_features,
                                                 i == 0, spatial) for i in range(layers)])
        # ELU, not ReLU, in the output head: a narrow head of ReLUs can start dead (every logit a constant)
        self.head = nn.Sequential(nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU(),
                                  nn.Conv2d(channels, out_per_pixel, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        img = x.expand(*batch, self.x_dim).reshape(-1, 1, self.h, self.w)
        c = context.expand(*batch, context.shape[-1]).reshape(img.shape[0], context.shape[-1])
        if self.context_map is not None:
            c = self.context_map(c).reshape(img.shape[0], -1, self.h, self.w)
        elif self.position is not None:
            c = self.position.expand(img.shape[0], -1, -1, -1)
        v = h = img
        for layer in self.layers:
            v, h = layer(v, h, c)
        out = self.head(h).flatten(2).transpose(1, 2)  # (B, H*W, out_per_pixel): pixel-major
        return out.reshape(*batch, self.x_dim * self.out_per_pixel)
