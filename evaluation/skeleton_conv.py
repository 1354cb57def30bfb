"""Skeleton-aware convolution blocks (NeMF / "skeleton-aware networks" style) used by the FGD autoencoder.

The skeleton is described by *edges* (parent joint, child joint). Each edge owns a fixed number of channels; a
``SkeletonConv`` is a Conv1d whose weight is masked so that the channels of an edge only see the channels of edges
within ``skeleton_dist`` hops; a ``SkeletonPool`` merges pairs of consecutive edges along kinematic chains with a
fixed averaging matrix. Masks and pooling matrices are non-trainable ``nn.Parameter``s: the reference stores them in
the state dict (and in the released checkpoint), so we keep them there too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Edge = tuple[int, int]


# ----------------------------------------------------------------------------------------------------------------
# Topology helpers (pure python, deterministic)
# ----------------------------------------------------------------------------------------------------------------
def edges_from_parents(parents: Sequence[int]) -> list[Edge]:
    """Edge list of a kinematic tree: edge 0 links the root to a virtual joint ``len(parents)``; edge i (i >= 1)
    is (parents[i], i). So there is one edge per joint and a 55-joint SMPL-X body gives 55 edges."""
    parents = [int(p) for p in parents]
    if not parents or parents[0] != -1:
        raise ValueError(f"parents must start with the root (-1), got {parents[:3]}...")
    num_joints = len(parents)
    edges: list[Edge] = [(0, num_joints)]
    for child in range(1, num_joints):
        parent = parents[child]
        if not 0 <= parent < child:
            raise ValueError(f"joint {child} has parent {parent}; parents must precede their children")
        edges.append((parent, child))
    return edges


def edge_distances(edges: Sequence[Edge]) -> list[list[int]]:
    """Hop distance between edges: 0 to itself, 1 when they share a joint, shortest path otherwise."""
    n = len(edges)
    inf = 10**9
    dist = [[inf] * n for _ in range(n)]
    for i in range(n):
        dist[i][i] = 0
        for j in range(n):
            if i != j and set(edges[i]) & set(edges[j]):
                dist[i][j] = 1
    for k in range(n):  # Floyd-Warshall; n <= 55 so this is cheap
        dk = dist[k]
        for i in range(n):
            dik = dist[i][k]
            if dik == inf:
                continue
            di = dist[i]
            for j in range(n):
                if dik + dk[j] < di[j]:
                    di[j] = dik + dk[j]
    return dist


def edge_neighbours(edges: Sequence[Edge], max_dist: int) -> list[list[int]]:
    """For each edge, the ascending list of edges within ``max_dist`` hops (itself included)."""
    dist = edge_distances(edges)
    return [[j for j in range(len(edges)) if dist[i][j] <= max_dist] for i in range(len(edges))]


def edge_chains(edges: Sequence[Edge]) -> list[list[int]]:
    """Split the tree into chains of edge indices.

    Depth-first from joint 0, following edges in list order; a chain ends at a leaf joint (degree 1) or at a branching
    joint (degree > 2, other than the root), where new chains start for each child edge.
    """
    degree = Counter()
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1
    children: dict[int, list[int]] = {}
    for idx, (a, _) in enumerate(edges):
        children.setdefault(a, []).append(idx)

    chains: list[list[int]] = []

    def walk(joint: int, chain: list[int]) -> None:
        if degree[joint] > 2 and joint != 0:
            chains.append(chain)
            chain = []
        if degree[joint] == 1:
            chains.append(chain)
            return
        for idx in children.get(joint, []):
            walk(edges[idx][1], chain + [idx])

    walk(0, [])
    return [c for c in chains if c]


def pooling_groups(edges: Sequence[Edge], last_pool: bool) -> tuple[list[list[int]], list[Edge]]:
    """Groups of edges that one pooled edge averages, and the pooled topology.

    Within a chain, edges are merged in consecutive pairs; an odd chain keeps its first edge alone. With
    ``last_pool`` every whole chain collapses into one group (the pooled topology is then not needed).
    """
    groups: list[list[int]] = []
    new_edges: list[Edge] = []
    for chain in edge_chains(edges):
        if last_pool:
            groups.append(list(chain))
            continue
        if len(chain) % 2 == 1:
            groups.append([chain[0]])
            new_edges.append(tuple(edges[chain[0]]))
            chain = chain[1:]
        for k in range(0, len(chain), 2):
            groups.append([chain[k], chain[k + 1]])
            new_edges.append((edges[chain[k]][0], edges[chain[k + 1]][1]))
    return groups, new_edges


def pooling_matrix(groups: Sequence[Sequence[int]], num_edges: int, channels_per_edge: int) -> torch.Tensor:
    """(len(groups)*C, num_edges*C) averaging matrix: channel c of pooled edge g is the mean of channel c of the
    edges in group g."""
    c = channels_per_edge
    weight = torch.zeros(len(groups) * c, num_edges * c)
    for g, group in enumerate(groups):
        for e in group:
            for ch in range(c):
                weight[g * c + ch, e * c + ch] = 1.0 / len(group)
    return weight


def skeleton_conv_mask(
    neighbours: Sequence[Sequence[int]], in_per_edge: int, out_per_edge: int, kernel_size: int
) -> torch.Tensor:
    """(E*out_per_edge, E*in_per_edge, kernel) 0/1 mask: output block of edge i reads the input blocks of its
    neighbours at every temporal tap."""
    e = len(neighbours)
    mask = torch.zeros(e * out_per_edge, e * in_per_edge, kernel_size)
    for i, neigh in enumerate(neighbours):
        cols = _expand(neigh, in_per_edge)
        mask[i * out_per_edge : (i + 1) * out_per_edge, cols, :] = 1.0
    return mask


def _expand(edge_ids: Sequence[int], per_edge: int) -> list[int]:
    return [k * per_edge + c for k in edge_ids for c in range(per_edge)]


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------
class SkeletonConv(nn.Module):
    """Conv1d over (B, E*C_in, T) whose weight is masked by the skeleton neighbourhood."""

    def __init__(
        self,
        neighbours: Sequence[Sequence[int]],
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "constant",
        bias: bool = True,
    ) -> None:
        super().__init__()
        num_edges = len(neighbours)
        if in_channels % num_edges or out_channels % num_edges:
            raise ValueError(
                f"channels ({in_channels}->{out_channels}) must be multiples of the edge count {num_edges}"
            )
        if padding_mode not in ("constant", "zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        self.neighbours = [list(n) for n in neighbours]
        self.in_per_edge = in_channels // num_edges
        self.out_per_edge = out_channels // num_edges
        self.stride = stride
        self.padding = padding
        self.padding_mode = "constant" if padding_mode == "zeros" else padding_mode
        # Registration order (mask, weight, bias) is the reference state-dict order.
        self.mask = nn.Parameter(
            skeleton_conv_mask(self.neighbours, self.in_per_edge, self.out_per_edge, kernel_size), requires_grad=False
        )
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Per-edge block init: each output block is initialised like a dense conv over its own receptive set."""
        self.weight.zero_()
        k = self.weight.shape[-1]
        for i, neigh in enumerate(self.neighbours):
            rows = slice(i * self.out_per_edge, (i + 1) * self.out_per_edge)
            cols = _expand(neigh, self.in_per_edge)
            block = torch.empty(self.out_per_edge, len(cols), k)
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
            self.weight[rows, cols, :] = block
            if self.bias is not None:
                bound = 1.0 / math.sqrt(len(cols) * k)
                self.bias[rows].uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = F.pad(x, (self.padding, self.padding), mode=self.padding_mode)
        return F.conv1d(x, self.weight * self.mask, self.bias, stride=self.stride)


class SkeletonPool(nn.Module):
    """Mean-pool edges along kinematic chains: (B, E*C, T) -> (B, E'*C, T) with a fixed matrix."""

    def __init__(self, groups: Sequence[Sequence[int]], num_edges: int, channels_per_edge: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(pooling_matrix(groups, num_edges, channels_per_edge), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight, x)


class SkeletonResidual(nn.Module):
    """Strided skeleton-conv residual block: GroupNorm(SkConv_k(x)) + SkConv_1(x), then (pool) and activation.

    Sub-module names (residual.0 conv, residual.1 GroupNorm, shortcut, common.[0 pool,] act) follow the reference
    state-dict layout.
    """

    def __init__(
        self,
        edges: Sequence[Edge],
        neighbours: Sequence[Sequence[int]],
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        padding_mode: str,
        activation: str,
        last_pool: bool,
        norm_groups: int = 10,
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            SkeletonConv(neighbours, in_channels, out_channels, kernel_size, stride, padding, padding_mode),
            nn.GroupNorm(norm_groups, out_channels),
        )
        self.shortcut = SkeletonConv(neighbours, in_channels, out_channels, 1, stride, 0)
        groups, self.pooled_edges = pooling_groups(edges, last_pool)
        common: list[nn.Module] = []
        # A pool that would keep every edge as is (identity) is omitted, as in the reference (no key for it).
        if len(groups) != len(edges):
            common.append(SkeletonPool(groups, len(edges), out_channels // len(edges)))
        common.append(_activation(activation))
        self.common = nn.Sequential(*common)
        self.out_edges = len(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.common(self.residual(x) + self.shortcut(x))


def _activation(name: str) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":  # the reference uses PReLU for its "relu" option
        return nn.PReLU()
    raise ValueError(f"unknown activation {name!r}; expected 'tanh' or 'relu'")
