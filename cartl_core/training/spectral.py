"""Spectral normalisation with a target norm beta, for NEFT.

``W_used = beta * W / sigma(W)`` with sigma estimated by power iteration on W reshaped to
(out, in * kh * kw), persistent ``u``/``v`` buffers, one iteration per training forward and none in
eval (as in PyTorch's ``_SpectralNorm`` and the CARTL release). Mode ``"at-most"`` scales only
when sigma exceeds beta: ``W_used = W / max(1, sigma / beta)``.

This bounds the norm of the reshaped matrix, not the exact operator norm of the convolution
(which can be larger by up to a factor of sqrt(kh * kw)); that is what the paper does. The option
``estimate="conv"`` bounds the convolution's own operator norm at the input size it is applied to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cartl_core.errors import ConfigError


class BoundedSpectralNorm(nn.Module):
    """beta * W / sigma(W), sigma by power iteration on W reshaped to (out, -1).

    ``beta`` > 0 is :class:`~cartl_core.config.TransferConfig`'s check (every caller builds one).
    """

    _u: torch.Tensor
    _v: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, beta: float, mode: str = "exact", n_power_iterations: int = 1
    ) -> None:
        super().__init__()
        if mode not in ("exact", "at-most"):
            raise ConfigError("spectral_mode must be 'exact' or 'at-most'", field="spectral_mode")
        self.beta = float(beta)
        self.mode = mode
        self.n_power_iterations = n_power_iterations
        u, v = self._initial_vectors(weight.detach())
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        if u.numel() and v.numel():
            # Start from a converged estimate so the first training step is already bounded.
            self._power_iteration(weight.detach().float(), 15)

    def _initial_vectors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight.flatten(1)
        return (
            F.normalize(w.new_empty(w.shape[0]).normal_(), dim=0),
            F.normalize(w.new_empty(w.shape[1]).normal_(), dim=0),
        )

    def _op(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.mv(w.flatten(1), v)

    def _adjoint(self, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.mv(w.flatten(1).t(), u)

    @torch.no_grad()
    def _power_iteration(self, w: torch.Tensor, n: int) -> None:
        for _ in range(n):
            self._v.copy_(_unit(self._adjoint(w, self._u)))
            self._u.copy_(_unit(self._op(w, self._v)))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: a bf16 sigma would miss the bound by up to ~1%.
        with torch.autocast(weight.device.type, enabled=False):
            w = weight.float()
            if self.training:
                self._power_iteration(w.detach(), self.n_power_iterations)
            # Clones keep autograd from seeing the next in-place update of the buffers.
            u = self._u.clone(memory_format=torch.contiguous_format)
            v = self._v.clone(memory_format=torch.contiguous_format)
            return torch.sum(u * self._op(w, v))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(weight)
        if self.mode == "exact":
            return weight * (self.beta / sigma)
        return weight / torch.clamp(sigma / self.beta, min=1.0)


def _unit(t: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = torch.linalg.vector_norm(t).clamp_min(1e-12)
    return t / norm


class ConvOperatorSpectralNorm(BoundedSpectralNorm):
    """The same, with sigma the operator norm of the convolution itself at the layer's input size.

    Power iteration runs through ``conv2d`` and its adjoint ``conv_transpose2d`` on one image of
    the shape the layer actually sees (recorded by a forward pre-hook on the first call), so the
    bound holds for the layer as applied, not only for its reshaped kernel matrix.
    """

    def __init__(
        self, conv: nn.Conv2d, beta: float, mode: str = "exact", n_power_iterations: int = 1
    ) -> None:
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ConfigError(
                "the conv operator-norm estimate needs zero padding given as numbers; "
                "use spectral_estimate='matrix' for this model",
                field="spectral_estimate",
            )
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        super().__init__(conv.weight, beta, mode, n_power_iterations)
        self.hook = conv.register_forward_pre_hook(self._record_input_shape)

    def _initial_vectors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Sized on the first forward, once the input shape is known.
        return weight.new_empty(0), weight.new_empty(0)

    def _record_input_shape(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        shape = (1, *inputs[0].shape[1:])
        if tuple(self._v.shape) == shape:
            return
        w = _parametrized_original(_module).detach().float()
        self._v = _unit(torch.randn(shape, device=w.device))
        self._u = _unit(self._op(w, self._v))
        self._power_iteration(w, 30)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        if self._v.numel() == 0:
            # Weight read before any forward (e.g. at registration): no input size yet, so use
            # the reshaped-matrix norm, which the first forward replaces.
            norm: torch.Tensor = torch.linalg.matrix_norm(weight.detach().float().flatten(1), 2)
            return norm
        return super().sigma(weight)

    def _op(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, w, None, self.stride, self.padding, self.dilation, self.groups)

    def _adjoint(self, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        h, wd = self._v.shape[-2:]
        kh, kw = w.shape[-2:]
        extra = [
            size - ((out - 1) * st - 2 * pad + dil * (k - 1) + 1)
            for size, out, st, pad, dil, k in zip(
                (h, wd),
                u.shape[-2:],
                self.stride,
                self.padding,
                self.dilation,
                (kh, kw),
                strict=True,
            )
        ]
        return F.conv_transpose2d(
            u, w, None, self.stride, self.padding, tuple(extra), self.groups, self.dilation
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # u and v take the input's shape, so a resumed run must adopt the saved shapes first.
        for name in ("_u", "_v"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=self._u.device))
        super()._load_from_state_dict(state_dict, prefix, *args)


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    plist = module.get_submodule("parametrizations.weight")
    assert isinstance(plist, parametrize.ParametrizationList)
    return plist


def _parametrized_original(module: nn.Module) -> torch.Tensor:
    original: torch.Tensor = _weight_parametrizations(module).original
    return original


def _targets(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Every Conv2d and Linear inside the modules, nested ones included."""
    seen: dict[int, nn.Module] = {}
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                seen.setdefault(id(m), m)
    return list(seen.values())


def apply_spectral_norm(
    modules: Iterable[nn.Module],
    beta: float,
    mode: str = "exact",
    n_power_iterations: int = 1,
    estimate: str = "matrix",
) -> list[nn.Module]:
    """Parametrise every Conv2d/Linear in ``modules``; returns the layers it touched.

    ``estimate="conv"`` bounds each convolution's true operator norm instead of its reshaped
    kernel matrix (Linear layers are the same either way).
    """
    if estimate not in ("matrix", "conv"):
        raise ConfigError("spectral_estimate must be 'matrix' or 'conv'", field="spectral_estimate")
    layers = _targets(modules)
    for layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            continue
        sn: BoundedSpectralNorm
        if estimate == "conv" and isinstance(layer, nn.Conv2d):
            sn = ConvOperatorSpectralNorm(layer, beta, mode, n_power_iterations)
        else:
            sn = BoundedSpectralNorm(layer.get_parameter("weight"), beta, mode, n_power_iterations)
        parametrize.register_parametrization(layer, "weight", sn)
    return layers


def fold_spectral_norm(model: nn.Module) -> int:
    """Bake beta * W / sigma into plain weights and drop the parametrisations.

    Done in eval mode so the stored u/v are used as they are (no extra power iteration): the
    exported model computes exactly what the trained model computed at evaluation time.
    """
    was_training = model.training
    model.eval()
    count = 0
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight"):
            for p in _weight_parametrizations(m):
                if isinstance(p, ConvOperatorSpectralNorm):
                    p.hook.remove()
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            count += 1
    model.train(was_training)
    return count


def matrix_spectral_norm(weight: torch.Tensor) -> float:
    """Exact largest singular value of the weight reshaped to (out, -1)."""
    return float(torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2))


@torch.no_grad()
def conv_operator_norm(
    conv: nn.Conv2d, input_shape: tuple[int, int, int], iters: int = 200
) -> float:
    """Largest singular value of the convolution as a linear map on inputs of ``input_shape``."""
    probe = ConvOperatorSpectralNorm.__new__(ConvOperatorSpectralNorm)
    nn.Module.__init__(probe)
    probe.stride, probe.padding = conv.stride, conv.padding  # type: ignore[assignment]
    probe.dilation, probe.groups = conv.dilation, conv.groups
    w = conv.weight.detach().double()
    probe._v = _unit(torch.randn((1, *input_shape), dtype=torch.float64))
    probe._u = _unit(probe._op(w, probe._v))
    probe._power_iteration(w, iters)
    return float(torch.sum(probe._u * probe._op(w, probe._v)))
