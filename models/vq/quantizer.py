"""EMA-reset vector quantiser with a learnable codebook projection (GestureLSM's ``QuantizeEMAReset``).

* The codebook is a buffer updated by EMA, never by gradient. A learnable ``embedding_proj`` Linear is applied to
  it before distances and look-ups (SimVQ-like); the second commitment term ``mse(sg(x), q)`` is what trains it.
* Training: codebook initialised from the first batch (tiled + noise), Gumbel-perturbed selection
  (temperature 0.5 from the RVQ-VAE), EMA update with reset of codes whose EMA count drops below 1.
* Eval: plain argmax, no update.

Difference from the reference, on purpose: upstream keeps ``code_sum``, ``code_count`` and ``init`` as plain
attributes, so its checkpoints hold only the codebook and a resumed run re-initialises the codebook from a batch.
Here they are non-persistent buffers (they follow ``.to(device)`` but stay out of ``state_dict()``, which therefore
keeps exactly the released key layout) and are saved/restored through ``ema_state_dict()`` /
``load_ema_state_dict()``. Loading a codebook through ``load_state_dict`` marks the layer initialised, with the EMA
statistics set the way upstream's own initialisation sets them (sum = codebook, count = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    u = torch.zeros_like(like).uniform_(0, 1)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    prob = counts / counts.sum()
    return torch.exp(-torch.sum(prob * torch.log(prob + 1e-7)))


class QuantizeEMAReset(nn.Module):
    """Quantise (N, C, T) vectors against ``nb_code`` codes of size ``code_dim``."""

    def __init__(self, nb_code: int = 1024, code_dim: int = 128, mu: float = 0.99) -> None:
        super().__init__()
        self.nb_code = int(nb_code)
        self.code_dim = int(code_dim)
        self.mu = float(mu)
        # Registration order matters: 'codebook' must precede 'embedding_proj.*' in state_dict(), as upstream.
        self.register_buffer("codebook", torch.zeros(self.nb_code, self.code_dim))
        self.embedding_proj = nn.Linear(self.code_dim, self.code_dim)
        self.register_buffer("code_sum", torch.zeros(self.nb_code, self.code_dim), persistent=False)
        self.register_buffer("code_count", torch.zeros(self.nb_code), persistent=False)
        self.register_buffer("initialized", torch.tensor(False), persistent=False)

    # ----- state -------------------------------------------------------------------------------------------------
    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        return {"code_sum": self.code_sum.detach().clone(), "code_count": self.code_count.detach().clone(),
                "initialized": self.initialized.detach().clone()}

    def load_ema_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"code_sum", "code_count", "initialized"} - set(state)
        if missing:
            raise KeyError(f"quantiser EMA state lacks {sorted(missing)}")
        self.code_sum.copy_(state["code_sum"])
        self.code_count.copy_(state["code_count"])
        self.initialized.copy_(torch.as_tensor(state["initialized"], dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "codebook" in state_dict:
            # A loaded codebook is a trained one: never re-initialise it from a batch (upstream would).
            with torch.no_grad():
                self.code_sum.copy_(self.codebook)
                self.code_count.fill_(1.0)
                self.initialized.fill_(True)

    # ----- core --------------------------------------------------------------------------------------------------
    def projected_codebook(self) -> torch.Tensor:
        # A copy goes into the graph, so the in-place EMA update below cannot invalidate it (in-place keeps the
        # buffer's identity, which DDP's buffer broadcast relies on).
        return self.embedding_proj(self.codebook.clone())

    def _tile(self, x: torch.Tensor) -> torch.Tensor:
        """At least ``nb_code`` rows: repeat x and add N(0, (0.01/sqrt(C))^2) noise when x has fewer rows."""
        n = x.shape[0]
        if n >= self.nb_code:
            return x
        reps = (self.nb_code + n - 1) // n
        out = x.repeat(reps, 1)
        return out + torch.randn_like(out) * (0.01 / math.sqrt(self.code_dim))

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor) -> None:
        """x: (N, C) encoder vectors."""
        self.codebook.copy_(self._tile(x)[: self.nb_code])
        self.code_sum.copy_(self.codebook)
        self.code_count.fill_(1.0)
        self.initialized.fill_(True)

    def distances(self, x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (N, nb_code) = |x|^2 - 2 x p^T + |p|^2."""
        k_w = proj.t()
        return x.pow(2).sum(-1, keepdim=True) - 2 * x @ k_w + k_w.pow(2).sum(0, keepdim=True)

    def select(self, x: torch.Tensor, proj: torch.Tensor, temperature: float = 0.0,
               stochastic: bool = False) -> torch.Tensor:
        logits = -self.distances(x, proj)
        if stochastic and temperature > 0:
            logits = logits / temperature + gumbel_noise(logits)
        return logits.argmax(dim=-1)

    def _counts(self, code_idx: torch.Tensor) -> torch.Tensor:
        return torch.bincount(code_idx, minlength=self.nb_code).to(self.code_count.dtype)

    @torch.no_grad()
    def update_codebook(self, x: torch.Tensor, code_idx: torch.Tensor) -> torch.Tensor:
        """EMA update of sum/count from the batch (x (N, C), indices (N,)); reset codes with EMA count < 1 to random
        batch vectors. Returns the batch perplexity."""
        onehot = F.one_hot(code_idx, self.nb_code).to(x.dtype)  # (N, K)
        batch_sum = onehot.t() @ x
        batch_count = onehot.sum(0)
        tiled = self._tile(x)
        code_rand = tiled[torch.randperm(tiled.shape[0], device=x.device)[: self.nb_code]]
        self.code_sum.mul_(self.mu).add_((1.0 - self.mu) * batch_sum)
        self.code_count.mul_(self.mu).add_((1.0 - self.mu) * batch_count)
        usage = (self.code_count.view(-1, 1) >= 1.0).to(x.dtype)
        code_update = self.code_sum / self.code_count.view(-1, 1)
        self.codebook.copy_(usage * code_update + (1.0 - usage) * code_rand)
        return perplexity_from_counts(batch_count)

    def forward(self, x: torch.Tensor, temperature: float | None = 0.0,
                eval_mode: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, T) -> (quantised (N, C, T) straight-through, indices (N, T), commit loss, perplexity).

        ``eval_mode`` defaults to ``not self.training``; when true: argmax selection, no initialisation, no EMA
        update, whatever the module mode.
        """
        if eval_mode is None:
            eval_mode = not self.training
        n, c, t = x.shape
        if c != self.code_dim:
            raise ValueError(f"quantiser expects {self.code_dim} channels, got input of shape {tuple(x.shape)}")
        # Distances/argmax in float32 even under autocast: bf16 rounding would flip code choices.
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().permute(0, 2, 1).reshape(n * t, c)
            if not eval_mode and not bool(self.initialized):
                self.init_codebook(flat.detach())
            proj = self.projected_codebook()
            code_idx = self.select(flat.detach(), proj.detach(), temperature or 0.0, stochastic=not eval_mode)
            x_d = F.embedding(code_idx, proj)
            if eval_mode:
                perplexity = perplexity_from_counts(self._counts(code_idx))
            else:
                perplexity = self.update_codebook(flat.detach(), code_idx)
            # Commitment on the encoder side plus the term that trains embedding_proj.
            commit_loss = F.mse_loss(flat, x_d.detach()) + F.mse_loss(flat.detach(), x_d)
            x_d = flat + (x_d - flat).detach()  # straight-through
        x_d = x_d.view(n, t, c).permute(0, 2, 1).contiguous()
        return x_d, code_idx.view(n, t), commit_loss, perplexity
