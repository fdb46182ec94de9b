"""Linear and 1-D convolution layers with Xavier-uniform initialisation.

The wrapped module is stored as `linear_layer` / `conv` so that state_dict keys match NVIDIA's
(`decoder.linear_projection.linear_layer.weight`, `encoder.convolutions.0.0.conv.weight`, ...).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class LinearNorm(nn.Module):
    """`nn.Linear` whose weight is Xavier-uniform with the gain of the following nonlinearity.

    Args:
        in_dim: input features.
        out_dim: output features.
        bias: whether the layer has a bias.
        w_init_gain: nonlinearity name for `nn.init.calculate_gain` ("linear", "tanh", "relu",
            "sigmoid").
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True,
                 w_init_gain: str = "linear") -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.linear_layer.weight,
                                gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.linear_layer(x)


class ConvNorm(nn.Module):
    """`nn.Conv1d` with 'same' padding for odd kernels and Xavier-uniform weight.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel width.
        stride: convolution stride.
        padding: None = `dilation * (kernel_size - 1) // 2`, which keeps the length.
        dilation: convolution dilation.
        bias: whether the layer has a bias.
        w_init_gain: nonlinearity name for `nn.init.calculate_gain`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
                 bias: bool = True, w_init_gain: str = "linear") -> None:
        super().__init__()
        if padding is None:
            if kernel_size % 2 != 1:
                raise ValueError(f"layers.py: ConvNorm needs an odd kernel_size for 'same' "
                                 f"padding, got {kernel_size}")
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=bias)
        nn.init.xavier_uniform_(self.conv.weight, gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T) -> (B, out_channels, T') (T' = T for the default padding)."""
        return self.conv(x)
