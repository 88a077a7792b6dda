"""The Helmholtz–Hodge split of a 2D field on a grid, f = ∇φ + ∇^⊥ψ + h, and an eps_model made of a field's
gradient part.

∇φ is the conservative part of a field (what a potential, such as a classifier's log-probability, can give);
∇^⊥ψ carries its curl. ConservativeProjection turns the gradient part of a CFG field back into an eps_model, so
that Algorithm 2 can sample with the curl of a learned field removed (SPEC §5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import fft

from ..core.guidance import EpsModel
from .grid import Grid2D, grid_values, jacobian_fd


def _faces(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal components on cell faces: f_x on x-faces (n, n+1) and f_y on y-faces (n+1, n), by averaging the
    two neighbouring centres inside and linear extrapolation on the boundary."""
    def along(v: torch.Tensor, dim: int) -> torch.Tensor:
        v = v.movedim(dim, -1)
        inner = (v[..., 1:] + v[..., :-1]) / 2
        first, last = 1.5 * v[..., :1] - 0.5 * v[..., 1:2], 1.5 * v[..., -1:] - 0.5 * v[..., -2:-1]
        return torch.cat([first, inner, last], dim=-1).movedim(-1, dim)

    return along(values[..., 0], 1), along(values[..., 1], 0)


def _poisson_neumann(rhs: torch.Tensor, cell: float) -> torch.Tensor:
    """φ with Δ_h φ = rhs, zero flux through the boundary and zero mean (5-point Laplacian, diagonal under DCT-II)."""
    n_y, n_x = rhs.shape
    eig = ((2 * torch.cos(math.pi * torch.arange(n_y, dtype=torch.float64) / n_y) - 2)[:, None]
           + (2 * torch.cos(math.pi * torch.arange(n_x, dtype=torch.float64) / n_x) - 2)[None]) / cell**2
    coeffs = torch.from_numpy(fft.dctn(rhs.numpy(), type=2, norm="ortho"))
    eig[0, 0] = 1.0  # the constant mode: fixed by the zero mean below
    coeffs = coeffs / eig
    coeffs[0, 0] = 0.0
    return torch.from_numpy(fft.idctn(coeffs.numpy(), type=2, norm="ortho"))


def _poisson_dirichlet(rhs: torch.Tensor, cell: float) -> torch.Tensor:
    """ψ with Δ_h ψ = rhs and ψ = 0 on the boundary faces (5-point Laplacian, diagonal under DST-II)."""
    n_y, n_x = rhs.shape
    eig = ((2 * torch.cos(math.pi * torch.arange(1, n_y + 1, dtype=torch.float64) / n_y) - 2)[:, None]
           + (2 * torch.cos(math.pi * torch.arange(1, n_x + 1, dtype=torch.float64) / n_x) - 2)[None]) / cell**2
    coeffs = torch.from_numpy(fft.dstn(rhs.numpy(), type=2, norm="ortho")) / eig
    return torch.from_numpy(fft.idstn(coeffs.numpy(), type=2, norm="ortho"))


@dataclass
class HelmholtzHodge:
    """f = ∇φ + ∇^⊥ψ + h on a grid, all (n, n, 2) at cell centres except the scalars φ, ψ (n, n).

    ∇φ carries all of f's divergence and its normal flux through the boundary (Δφ = div f, Neumann, by DCT);
    ∇^⊥ψ = (−∂_yψ, ∂_xψ) carries its curl (Δψ = curl f, Dirichlet, by DST); h is the harmonic rest.
    rotational_energy_fraction = ‖f − ∇φ‖²/‖f‖², measured on the cell faces where the split is exact:
    there f − ∇φ has zero discrete divergence and zero normal flux.
    """

    grid: Grid2D
    field: torch.Tensor
    potential: torch.Tensor
    gradient: torch.Tensor
    stream: torch.Tensor
    rotational: torch.Tensor
    rotational_energy_fraction: float
    face_divergence_residual: float

    @property
    def harmonic(self) -> torch.Tensor:
        return self.field - self.gradient - self.rotational


def helmholtz_hodge(values: torch.Tensor, grid: Grid2D) -> HelmholtzHodge:
    """Split a field sampled at the grid's cell centres, values (n, n, 2) [y, x, component]."""
    if values.shape != (grid.n, grid.n, 2) or grid.n < 3:
        raise ValueError(f"values must have shape ({grid.n}, {grid.n}, 2) on a grid with n >= 3, "
                         f"got {tuple(values.shape)}")
    values, h = values.to(torch.float64), grid.cell
    fx, fy = _faces(values)
    inner_x, inner_y = fx.clone(), fy.clone()
    inner_x[:, [0, -1]], inner_y[[0, -1], :] = 0.0, 0.0  # the boundary flux is given to ∇φ on both sides
    potential = _poisson_neumann((inner_x.diff(dim=1) + inner_y.diff(dim=0)) / h, h)
    gx, gy = fx.clone(), fy.clone()
    gx[:, 1:-1], gy[1:-1, :] = potential.diff(dim=1) / h, potential.diff(dim=0) / h
    rx, ry = fx - gx, fy - gy
    residual = ((rx.diff(dim=1) + ry.diff(dim=0)) / h).abs().max() / (values.abs().max() / h + 1e-300)
    gradient = torch.stack([(gx[:, 1:] + gx[:, :-1]) / 2, (gy[1:] + gy[:-1]) / 2], dim=-1)
    jac = jacobian_fd(values, grid).reshape(grid.n, grid.n, 2, 2)
    stream = _poisson_dirichlet(jac[..., 1, 0] - jac[..., 0, 1], h)
    d_dy, d_dx = torch.gradient(stream, spacing=h, dim=(0, 1))
    fraction = ((rx**2).sum() + (ry**2).sum()) / ((fx**2).sum() + (fy**2).sum())
    return HelmholtzHodge(grid, values, potential, gradient, stream, torch.stack([-d_dy, d_dx], dim=-1),
                          fraction.item(), residual.item())


def bilinear(grid: Grid2D, values: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate cell-centre values (n, n, C) at points (N, 2): returns (N, C) and the mask of points inside
    the square spanned by the centres (values there are clamped to the edge)."""
    u = (points.to(torch.float64) + grid.half_width) / grid.cell - 0.5  # (N, 2) fractional [x, y] indices
    inside = ((u >= 0) & (u <= grid.n - 1)).all(dim=1)
    u = u.clamp(0, grid.n - 1)
    i0 = u.floor().long().clamp(max=grid.n - 2)
    t = u - i0
    x0, y0, tx, ty = i0[:, 0], i0[:, 1], t[:, :1], t[:, 1:]
    return ((1 - tx) * (1 - ty) * values[y0, x0] + tx * (1 - ty) * values[y0, x0 + 1]
            + (1 - tx) * ty * values[y0 + 1, x0] + tx * ty * values[y0 + 1, x0 + 1]), inside


class ConservativeProjection:
    """An eps_model whose output at (z, λ, c) is the gradient part ∇φ of the Helmholtz–Hodge split of
    z ↦ eps_model(z, λ, c) on `grid`, interpolated at z (the raw field outside the grid).

    Wrap a guided model, ConservativeProjection(guided(model, w), grid), to sample with the conservative
    projection of the CFG field. Each distinct (λ, c) in a batch costs one field evaluation on the grid.
    """

    def __init__(self, eps_model: EpsModel, grid: Grid2D, num_classes: int | None = None):
        self.eps_model, self.grid = eps_model, grid
        self.num_classes = num_classes if num_classes is not None else getattr(eps_model, "num_classes", None)

    def _field(self, lam: float, c: int, dtype: torch.dtype):
        """points (N, 2) -> eps_model(points, λ, c), at a fixed level and class."""
        return lambda points: self.eps_model(points, torch.full((len(points),), lam, dtype=dtype),
                                             torch.full((len(points),), c, dtype=torch.long))

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.eps_model(z, lam, c).clone()
        keys, which = torch.unique(torch.stack([lam.to(torch.float64), c.to(torch.float64)], dim=1), dim=0,
                                   return_inverse=True)
        for k, (lam_k, c_k) in enumerate(keys.tolist()):
            chosen = which == k
            split = helmholtz_hodge(grid_values(self._field(lam_k, int(c_k), z.dtype), self.grid), self.grid)
            values, inside = bilinear(self.grid, split.gradient, z[chosen])
            rows = chosen.nonzero()[:, 0][inside]
            out[rows] = values[inside].to(out.dtype)
        return out
