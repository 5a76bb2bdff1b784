"""Heads on the policy's last hidden state: PPO's value head and CARFT's CoT embedding heads.

Every head maps hidden states ``[B, T, H]`` to ``(values [B, T], embeddings [B, T, d] | None)``.
The value projection starts at zero (as in OpenAI's lm-human-preferences): a randomly
initialised critic adds per-token noise of the size of the rewards to every advantage
until it has learned, which on short runs is most of the run.
"""

from __future__ import annotations

import torch
from torch import nn


def value_projection(width: int) -> nn.Linear:
    layer = nn.Linear(width, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ValueHead(nn.Module):
    """PPO's critic: ``V_t = w_v . h_t + b`` (ReFT)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.value = value_projection(hidden_size)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.value(hidden).squeeze(-1), None


class SharedCoTHead(nn.Module):
    """CARFT's final head: ``e_t = W_e h_t`` and the value read from the embedding,
    ``V_t = w_v . ReLU(e_t) + b``, so the critic shapes the representation space."""

    def __init__(self, hidden_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(hidden_size, embed_dim, bias=False)
        self.value = value_projection(embed_dim)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(hidden)
        return self.value(torch.relu(embeddings)).squeeze(-1), embeddings


class SeparateCoTHead(nn.Module):
    """CARFT's ``separate`` option: ``V_t = w_v . h_t + b`` and ``e_t = W_e h_t`` side by side."""

    def __init__(self, hidden_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(hidden_size, embed_dim, bias=False)
        self.value = value_projection(hidden_size)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.value(hidden).squeeze(-1), self.embed(hidden)


class MLPCoTHead(nn.Module):
    """The seed's CoT encoder, applied per token: Linear(H, 512) - ReLU - Linear(512, 256) -
    LayerNorm, then a contrastive projection (256 -> 256) gives ``e_t`` and a quality
    projection (256 -> 64) feeds the value, ``V_t = w_v . ReLU(q_t) + b``."""

    def __init__(self, hidden_size: int, width: int = 512, feature_dim: int = 256, quality_dim: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(), nn.Linear(width, feature_dim), nn.LayerNorm(feature_dim))
        self.contrastive_proj = nn.Linear(feature_dim, feature_dim)
        self.quality_proj = nn.Linear(feature_dim, quality_dim)
        self.value = value_projection(quality_dim)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(hidden)
        values = self.value(torch.relu(self.quality_proj(features))).squeeze(-1)
        return values, self.contrastive_proj(features)


def build_head(kind: str, hidden_size: int, embed_dim: int = 64) -> nn.Module:
    if kind == "value":
        return ValueHead(hidden_size)
    if kind == "shared":
        return SharedCoTHead(hidden_size, embed_dim)
    if kind == "separate":
        return SeparateCoTHead(hidden_size, embed_dim)
    if kind == "mlp":
        return MLPCoTHead(hidden_size)
    raise ValueError(f"unknown head {kind!r}; expected value, shared, separate or mlp")
