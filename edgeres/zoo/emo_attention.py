"""EMO's dilated windowed attention, lowered to rank-4 tensors with static shapes.

The official EMO code partitions a ``B x C x H x W`` map into ``n x n`` dilated windows of
``w x w`` pixels (window ``(i, j)`` holds pixels ``(a*n + i, b*n + j)``) with a rank-6
rearrange, ``b c (a i) (b j) -> (b i j) c a b``, then splits channels into heads with a
rank-5 one. Runtimes for phones, NPUs and microcontrollers accept rank <= 4, so here every
step is a reshape or a batch-preserving permute of a rank-4 tensor, with every size fixed at
construction time and the batch as the single ``-1``: torch.fx traces it without control
flow, and capture turns it into plain reshape/transpose/matmul/softmax nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from edgeres.errors import UserError


class WindowGeometryError(UserError, ValueError):
    """A feature map that cannot be tiled by the attention window (a bad ``img_size``)."""


@dataclass(frozen=True)
class WindowGeometry:
    """How a ``res x res`` map is tiled: ``grid x grid`` dilated windows of ``window`` pixels."""

    res: int
    window: int
    grid: int

    @property
    def tokens(self) -> int:
        return self.window * self.window

    @classmethod
    def plan(cls, res: int, window: int, img_size: int, where: str) -> WindowGeometry:
        """Tile ``res``: one global window when ``res <= window``, else ``res / window`` windows.

        The official code zero-pads a map that the window does not divide, and the padded
        tokens then take part in the softmax. A static graph cannot pad and crop cheaply, so
        such sizes are rejected here, naming the input size that caused them.
        """
        if res <= window:
            return cls(res, res, 1)
        if res % window:
            raise WindowGeometryError(
                f"EMO {where}: img_size={img_size} gives a {res}x{res} feature map, which "
                f"{window}x{window} attention windows do not tile; use an img_size whose "
                f"attention stages are multiples of {window} (e.g. 224) or at most {window}"
            )
        return cls(res, window, res // window)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside dilated windows, on the un-expanded input (EMO iRMB).

    Q and K come from 1x1 convs C -> C with bias (the official single C -> 2C conv split in
    two halves: the IR has no slice op); the attention weights mix the normalised input
    itself, per head of ``dim_head`` channels. The iRMB applies its V expansion afterwards
    (the official ``attn_pre=True`` order).
    """

    def __init__(self, dim: int, dim_head: int, geometry: WindowGeometry,
                 attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % dim_head:
            raise ValueError(f"EMO attention: dim {dim} is not a multiple of dim_head {dim_head}")
        self.dim, self.dim_head, self.heads = dim, dim_head, dim // dim_head
        self.geometry = geometry
        self.scale = float(dim_head) ** -0.5
        self.q = nn.Conv2d(dim, dim, 1, bias=True)
        self.k = nn.Conv2d(dim, dim, 1, bias=True)
        self.attn_drop = nn.Dropout(attn_drop)

    def partition(self, x: Tensor) -> Tensor:
        """``B x C x (w n) x (w n)`` -> ``(B n n) x C x w x w`` in three rank-4 permutes."""
        g, c = self.geometry, self.dim
        w, n = g.window, g.grid
        if n == 1:
            return x
        x = x.reshape(-1, n, w, n).permute(0, 1, 3, 2)  # [B C a, i, j, b]
        x = x.reshape(-1, w, n * n, w).permute(0, 2, 1, 3)  # [B C, (i j), a, b]
        x = x.reshape(-1, c, n * n, w * w).permute(0, 2, 1, 3)  # [B, (i j), C, (a b)]
        return x.reshape(-1, c, w, w)

    def unpartition(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`partition`."""
        g, c = self.geometry, self.dim
        w, n = g.window, g.grid
        if n == 1:
            return x
        x = x.reshape(-1, n * n, c, w * w).permute(0, 2, 1, 3)  # [B, C, (i j), (a b)]
        x = x.reshape(-1, n * n, w, w).permute(0, 2, 1, 3)  # [B C, a, (i j), b]
        x = x.reshape(-1, n, n, w).permute(0, 1, 3, 2)  # [B C a, i, b, j]
        return x.reshape(-1, c, g.res, g.res)

    def forward(self, x: Tensor) -> Tensor:
        h, d, t = self.heads, self.dim_head, self.geometry.tokens
        xw = self.partition(x)  # 1x1 convs commute with the pixel permutation
        q = self.q(xw).reshape(-1, h, d, t)
        k = self.k(xw).reshape(-1, h, d, t)
        attn = (q.transpose(-2, -1) @ k) * self.scale  # [B', heads, query, key]
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = xw.reshape(-1, h, d, t) @ attn.transpose(-2, -1)  # [B', heads, d, query]
        return self.unpartition(out.reshape(-1, self.dim, self.geometry.window,
                                            self.geometry.window))
