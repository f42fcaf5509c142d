"""Branch A of the LGS block: Mamba2 (SSD) over VFIMamba's interleaved four-direction scan (docs/DESIGN.md 2.5).

For a stacked frame pair ``u`` (2B, H, W, C) (frame 0 in the first half of the batch):

1. one input projection per token, ``C -> [z E | x E | B K*G*N | C K*G*N | dt K*n_h]`` (it commutes with any
   permutation, so there is no reason to recompute it per direction);
2. a depthwise 3x3 conv + SiLU on the 2-D maps of x, B, C per frame (non-causal local mixing, VFIMamba style;
   Mamba2's causal conv1d along each sequence is not needed, which is why causal-conv1d is not a dependency);
3. the two frames interleaved into four sequences of L = 2HW tokens (:func:`model.ops.scan.interleave_scan`);
4. one :func:`model.ops.ssd.ssd_scan` call for all four directions;
5. the exact inverse (:func:`model.ops.scan.merge_scan`), summed over directions;
6. gated RMSNorm ``norm(y * SiLU(z))`` and the output projection.

``per_direction=True`` gives every direction its own B, C, dt, A, D and dt_bias (VFIMamba's per-direction
parameters); the directions then sit on the head axis so one kernel call still covers them (K = 4 above).
``groups=0`` means one B/C group per head, the layout the MaTVLM attention->Mamba2 init needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops.pairs import split_frames
from .ops.scan import NUM_DIRECTIONS, interleave_scan, merge_scan
from .ops.ssd import INFERENCE_TRITON_CHUNK, ssd_scan


class GatedRMSNorm(nn.Module):
    """``RMSNorm_per_group(y * SiLU(z)) * weight`` over the last axis (Mamba2's norm_before_gate=False)."""

    def __init__(self, channels: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        gated = y.float() * F.silu(z.float())
        grouped = gated.unflatten(-1, (-1, self.group_size))
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(dtype)


class InterleavedMamba2(nn.Module):
    """Branch A. forward: (2B, H, W, C) -> (2B, H, W, C)."""

    def __init__(self, dim: int, expand: int = 2, headdim: int = 32, state_size: int = 64, groups: int = 1,
                 chunk_size: int = 256, per_direction: bool = False, conv_kernel: int = 3, backend: str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 a_init_range: tuple[float, float] = (1.0, 16.0)):
        super().__init__()
        inner = expand * dim
        if inner % headdim:
            raise ValueError(f"Mamba2 inner width {inner} must be a multiple of headdim {headdim}")
        self.dim, self.inner, self.headdim, self.state_size = dim, inner, headdim, state_size
        self.num_heads = inner // headdim
        self.groups = groups or self.num_heads
        if self.num_heads % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {self.num_heads} heads")
        self.directions = NUM_DIRECTIONS if per_direction else 1
        self.per_direction = per_direction
        self.chunk_size, self.backend = chunk_size, backend
        # The scan's chunk length where no gradient is recorded on CUDA; None: min(chunk_size, INFERENCE_TRITON_CHUNK),
        # the fastest measured at inference's sequence lengths (model/ops/ssd.py). Not a weight: any length computes
        # the same scan (benchmark/bench_model.py --ssm_chunk_size sets it to compare lengths).
        self.inference_chunk_size: int | None = None
        bc_width = self.directions * self.groups * state_size
        self.in_proj = nn.Linear(dim, 2 * inner + 2 * bc_width + self.directions * self.num_heads)
        conv_channels = inner + 2 * bc_width
        self.conv = nn.Conv2d(conv_channels, conv_channels, conv_kernel, padding=conv_kernel // 2, groups=conv_channels)
        # The conv reads a permuted view of in_proj's (2B, H, W, C) output, so it runs channels-last and its weight
        # gradient comes back with channels-last strides (C k k, 1, k, 1). The weight is kept in those strides (the
        # same bytes in the same order: its second dimension has size 1), so gradient and parameter agree exactly and
        # DDP's bucket view takes the gradient without its "Grad strides do not match bucket view strides" warning.
        weight = self.conv.weight.detach()
        self.conv.weight = nn.Parameter(torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight))

        shape = (self.directions, self.num_heads)
        dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))          # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(shape).uniform_(*a_init_range)))
        self.D = nn.Parameter(torch.ones(shape))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True                                            # read by the optimizer builder
        self.norm = GatedRMSNorm(inner, group_size=inner // self.groups)
        self.out_proj = nn.Linear(inner, dim)

    def chunk_for(self, on_cuda: bool, grad_enabled: bool) -> int:
        """The scan's chunk length for a call: the configured one with gradients or off CUDA (training, the CPU),
        else :attr:`inference_chunk_size` or min(configured, INFERENCE_TRITON_CHUNK)."""
        if grad_enabled or not on_cuda:
            return self.chunk_size
        return self.inference_chunk_size or min(self.chunk_size, INFERENCE_TRITON_CHUNK)

    def projection_slices(self) -> dict[str, slice]:
        """Row ranges of ``in_proj`` for z, x, B, C, dt (used by the MaTVLM init)."""
        bc = self.directions * self.groups * self.state_size
        edges = [0, self.inner, 2 * self.inner, 2 * self.inner + bc, 2 * self.inner + 2 * bc,
                 2 * self.inner + 2 * bc + self.directions * self.num_heads]
        return {name: slice(a, b) for name, a, b in zip(("z", "x", "B", "C", "dt"), edges[:-1], edges[1:])}

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        pairs2, height, width, _ = u.shape
        pairs = pairs2 // 2
        z, xbc, dt = torch.split(self.in_proj(u), [self.inner, self.conv.in_channels, self.directions * self.num_heads], -1)
        xbc = F.silu(self.conv(xbc.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)      # per frame: frames are batch rows
        tokens = torch.cat((xbc, dt), dim=-1)                                      # (2B, H, W, Ctot)
        seqs = interleave_scan(*split_frames(tokens))                              # (B, 4, L, Ctot)
        length = seqs.shape[2]
        chunk = self.chunk_for(u.is_cuda, torch.is_grad_enabled())
        bc = self.directions * self.groups * self.state_size
        A = -torch.exp(self.A_log.float())                                         # (K, n_h)
        if not self.per_direction:
            flat = seqs.reshape(pairs * NUM_DIRECTIONS, length, -1)               # directions on the batch axis
            x, B, C, dt_seq = torch.split(flat, [self.inner, bc, bc, self.num_heads], -1)
            y = ssd_scan(x.unflatten(-1, (self.num_heads, self.headdim)), dt_seq, A[0],
                         B.unflatten(-1, (self.groups, self.state_size)), C.unflatten(-1, (self.groups, self.state_size)),
                         chunk_size=chunk, D=self.D[0], dt_bias=self.dt_bias[0], dt_softplus=True,
                         backend=self.backend)
            y = y.reshape(pairs, NUM_DIRECTIONS, length, self.inner)
        else:
            # Directions on the head axis: head k*n_h + j of direction k uses the k-th slice of B, C, dt.
            seqs = seqs.permute(0, 2, 1, 3)                                        # (B, L, 4, Ctot)
            x, B, C, dt_seq = torch.split(seqs, [self.inner, bc, bc, self.directions * self.num_heads], -1)
            own = torch.arange(NUM_DIRECTIONS, device=u.device)

            def own_slice(t: torch.Tensor) -> torch.Tensor:   # (B, L, 4, 4*w) -> (B, L, 4, w): direction k takes slice k
                return t.unflatten(-1, (NUM_DIRECTIONS, -1))[:, :, own, own]

            B = own_slice(B).reshape(pairs, length, NUM_DIRECTIONS * self.groups, self.state_size)
            C = own_slice(C).reshape(pairs, length, NUM_DIRECTIONS * self.groups, self.state_size)
            dt_seq = own_slice(dt_seq).reshape(pairs, length, NUM_DIRECTIONS * self.num_heads)
            y = ssd_scan(x.reshape(pairs, length, NUM_DIRECTIONS * self.num_heads, self.headdim), dt_seq,
                         A.flatten(), B, C, chunk_size=chunk, D=self.D.flatten(),
                         dt_bias=self.dt_bias.flatten(), dt_softplus=True, backend=self.backend)
            y = y.reshape(pairs, length, NUM_DIRECTIONS, self.inner).permute(0, 2, 1, 3)
        y0, y1 = merge_scan(y, height, width)
        y = torch.cat((y0, y1), dim=0)                                             # (2B, H, W, E)
        return self.out_proj(self.norm(y, z))
