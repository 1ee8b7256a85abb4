"""Inference-ready copies of a network: BatchNorm folded into the convolutions, channels-last.

``prepare_model(model, device)`` returns an eval-mode copy that computes the same function as
``model.eval()`` with fewer passes over memory: every convolution followed by a BatchNorm gets
the normalisation folded into its weights and bias (the BatchNorm becomes an identity), and
convolution weights are stored channels-last (NHWC / NDHWC), the layout oneDNN and cuDNN run
fastest. On CPU, fp32 convolutions always go to oneDNN: PyTorch otherwise sends small inputs
(one stack, the deeper 3D layers) to its reference kernels, 5-8 times slower. Under bf16
autocast the output layer stays fp32 (see ``use_inference_convolutions``).

The caller's model is never changed, so training and fine-tuning can keep using it; the copy
is cached per model and rebuilt when its weights change (an optimiser step or
``load_state_dict`` bumps the tensors' version counters).
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
import weakref
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# per model, per runtime: (fingerprint, prepared copy)
_cache: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, nn.Module]]] = \
    weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution in an ``nn.Sequential`` into
    that convolution, in place (eval semantics: running statistics); returns how many."""
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if (isinstance(conv, _CONVS) and isinstance(norm, nn.modules.batchnorm._BatchNorm)
                    and norm.track_running_stats and norm.running_mean is not None):
                module[i] = fuse_conv_bn_eval(conv.eval(), norm.eval())
                module[i + 1] = nn.Identity()
                folded += 1
    return folded


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store 2D convolution weights as NHWC and 3D ones as NDHWC, in place."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            fmt = torch.channels_last if module.weight.dim() == 4 else torch.channels_last_3d
            module.weight.data = module.weight.data.contiguous(memory_format=fmt)
    return model


class _InferenceConv:
    """Forward of a prepared convolution: oneDNN called directly for fp32 on CPU, and, for the
    output layer (``full_precision``), fp32 even under autocast."""

    full_precision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_precision and _autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._conv(x.float())
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 \
                and not _autocast_enabled("cpu"):  # under autocast PyTorch picks oneDNN itself
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding,
                                            self.stride, self.dilation, self.groups)
        return super().forward(x)


class _InferenceConv2d(_InferenceConv, nn.Conv2d):
    pass


class _InferenceConv3d(_InferenceConv, nn.Conv3d):
    pass


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return (torch.is_autocast_cpu_enabled() if device_type == "cpu"
                else torch.is_autocast_enabled())


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type``; None when autocast is off."""
    if not _autocast_enabled(device_type):
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return (torch.get_autocast_cpu_dtype() if device_type == "cpu"
                else torch.get_autocast_gpu_dtype())


def use_inference_convolutions(model: nn.Module) -> int:
    """Give zero-padded 2D/3D convolutions the ``_InferenceConv`` forward, in place, and keep
    the model's output layer (a convolution named ``head``) in fp32: rounding its weights to
    bf16 causes most of a bf16 run's error, for a negligible share of the work. Returns how
    many convolutions changed."""
    swapped = 0
    for module in model.modules():
        for base, fast in ((nn.Conv2d, _InferenceConv2d), (nn.Conv3d, _InferenceConv3d)):
            if (type(module) is base and module.padding_mode == "zeros"
                    and not isinstance(module.padding, str)):
                module.__class__ = fast
                swapped += 1
    head = getattr(model, "head", None)
    if isinstance(head, _InferenceConv):
        head.full_precision = True
    return swapped


def prepare_model(model: nn.Module, device: torch.device | str, runtime: str = "torch"
                  ) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device``: BatchNorm folded, channels-last weights,
    ``use_inference_convolutions``; with ``runtime="openvino"`` (CPU) the folded copy converted
    by ``openvino_network.convert``. The same copy is returned until the model's weights or
    buffers change."""
    device = torch.device(device)
    key = _fingerprint(model, device, runtime)
    with _cache_lock:
        hit = _cache.get(model, {}).get(runtime) if key is not None else None
        if hit is not None and hit[0] == key:
            return hit[1]
    with torch.no_grad():
        prepared = copy.deepcopy(model).eval()
        fold_batchnorm(prepared)
        if runtime == "openvino":
            from .openvino_network import convert

            prepared = convert(prepared.cpu())
        else:
            prepared = to_channels_last(prepared.to(device))
            use_inference_convolutions(prepared)
    for p in prepared.parameters():
        p.requires_grad_(False)
    if key is not None:
        with _cache_lock:
            _cache.setdefault(model, {})[runtime] = (key, prepared)
    return prepared


def _fingerprint(model: nn.Module, device: torch.device, runtime: str) -> tuple | None:
    """Identity and version of every weight and buffer; None when they cannot be tracked
    (tensors made under ``torch.inference_mode`` have no version counter)."""
    try:
        state = tuple((id(t), t.data_ptr(), t._version)
                      for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:
        return None
    return (str(device), runtime, state)


class DepthTapConv3d(nn.Conv3d):
    """A Conv3d computed as one 2D convolution: the depth taps of every output slice become
    input channels (``kd * C``), the slices become the batch. Same weights, same function; on
    CPU under bf16 autocast oneDNN then runs its 2D bf16 kernels (AMX), where its Conv3d weight
    gradient comes out non-finite (PyTorch 2.13, e.g. 32 -> 32 channels at depth 4, 96 x 96).
    Tensors stay channels-last (NDHWC), so the only copy is the tap-stacked input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kd, pd = self.kernel_size[0], self.padding[0]
        batch, channels, depth, height, width = x.shape
        out_depth = depth + 2 * pd - kd + 1
        x = F.pad(x.permute(0, 2, 3, 4, 1), (0, 0, 0, 0, 0, 0, pd, pd))  # (B, D', H, W, C)
        taps = torch.cat([x[:, t:t + out_depth] for t in range(kd)], dim=-1) if kd > 1 else x
        taps = taps.reshape(batch * out_depth, height, width, kd * channels)
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kd * channels,
                                                     *self.kernel_size[1:])
        y = F.conv2d(taps.permute(0, 3, 1, 2), weight, self.bias, padding=self.padding[1:])
        return y.permute(0, 2, 3, 1).reshape(batch, out_depth, height, width, -1) \
            .permute(0, 4, 1, 2, 3)


def use_depth_tap_convolutions(model: nn.Module) -> int:
    """Give every plain 3D convolution (stride 1, no dilation or groups, zero padding) of
    ``model`` the ``DepthTapConv3d`` forward, in place; returns how many changed."""
    swapped = 0
    for module in model.modules():
        if (type(module) is nn.Conv3d and module.stride == (1, 1, 1) and module.groups == 1
                and module.dilation == (1, 1, 1) and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            module.__class__ = DepthTapConv3d
            swapped += 1
    return swapped


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where oneDNN runs
    bf16 convolutions about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def warn_if_bf16_emulated(job: str) -> None:
    """Warn that ``job`` (e.g. "bf16 training") will be slow where this CPU has no bf16
    instructions (about a hundred times slower than fp32 on a 2-core AVX2 AMD EPYC)."""
    if not cpu_has_native_bf16():
        warnings.warn(f"this CPU has no bf16 instructions: {job} runs emulated, far slower than "
                      f"fp32 (--dtype fp32 or auto)", RuntimeWarning, stacklevel=3)
