"""Attention backends of the DiT: diffusers' own registry, validated against what is installed and the device, plus
one project-owned CPU backend that returns the log-sum-exp, so ring attention (and Ulysses x ring) runs on CPU/gloo.

    resolve_backend(name, device, ulysses, ring) -> str   `attention_backend=auto|<name>` checked (ValueError) and
                                                          resolved: auto = native, or an LSE backend under ring
    apply_backend(model, name)                            make every attention processor of `model` dispatch to it

Why a project backend: diffusers' ring attention merges partial attention outputs with the log-sum-exp, and all of its
backends that return one are CUDA kernels. torch's CPU flash op `aten::_scaled_dot_product_flash_attention_for_cpu`
returns (out, lse), which is all diffusers' templated ring / USP code needs from a `forward_op`. The backend is
registered with the registry's own `register` decorator under a project-owned str Enum key (diffusers'
`AttentionBackendName` is a closed Enum, so `model.set_attention_backend` cannot name it): it is selected by
resetting the processors to "use the active backend" and making it the registry's active backend. No diffusers file
is changed and no forward is replaced. The active backend is process-global, so `apply_backend` sets it on every
call (a later run in the same process that asks for a library backend names it on its processors explicitly).

Shapes (diffusers' model layout): q, k, v [B, S, H, D]; out [B, S, H, D]; lse [B, S, H].
"""
from __future__ import annotations

from enum import Enum

import torch

AUTO = "auto"
CPU_LSE = "wan_dist_cpu_flash_lse"
# the backends that run on CPU tensors (the others are CUDA / NPU / XLA kernels or hub downloads)
CPU_BACKENDS = ("native", "_native_math", "flex", CPU_LSE)
# context-parallel backends that cannot return the log-sum-exp ring attention merges with
NO_LSE = ("native",)
NOT_ON_CUDA = (CPU_LSE, "_native_npu", "_native_xla")


class WanDistBackend(str, Enum):
    # a project-owned registry key: like AttentionBackendName members it is a str with a `.value`, which is all the
    # registry reads
    CPU_FLASH_LSE = CPU_LSE


def _cpu_flash_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                          enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """diffusers' forward_op contract (as its _native_flash_attention_forward_op): model layout in and out."""
    if enable_gqa:
        raise ValueError(f"{CPU_LSE}: enable_gqa is not supported")
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))                   # [B, H, S, D]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)        # [B, H, S, D], [B, H, S]
    out = out.transpose(1, 2).contiguous()                                        # [B, S, H, D]
    lse = lse.transpose(1, 2).contiguous()                                        # [B, S, H]
    if _save_ctx:   # the ring backward overrides these per iteration, in model layout
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.attn_mask = dropout_p, is_causal, scale, attn_mask
    return (out, lse) if return_lse else out


def _cpu_flash_backward_op(ctx, grad_out, *args, query=None, key=None, value=None, out=None, lse=None, **kwargs):
    saved = ctx.saved_tensors
    query, key, value, out, lse = (s if x is None else x for x, s in zip((query, key, value, out, lse), saved))
    g, q, k, v, o = (x.transpose(1, 2).contiguous() for x in (grad_out, query, key, value, out))
    gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        g, q, k, v, o, lse.transpose(1, 2).contiguous(), ctx.dropout_p, ctx.is_causal, attn_mask=ctx.attn_mask,
        scale=ctx.scale)
    return tuple(x.transpose(1, 2).contiguous() for x in (gq, gk, gv))


def _check_cpu(query, key, value, **kwargs) -> None:
    if query.device.type != "cpu":
        raise ValueError(f"attention backend {CPU_LSE} runs on CPU tensors only, got {query.device}")


_REGISTERED = False


def register_cpu_lse_backend() -> None:
    """Register the CPU LSE backend in diffusers' registry (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from diffusers.models.attention_dispatch import (
        _AttentionBackendRegistry,
        _check_device,
        _check_shape,
        _templated_context_parallel_attention,
    )

    @_AttentionBackendRegistry.register(WanDistBackend.CPU_FLASH_LSE, constraints=[_check_device, _check_cpu,
                                                                                   _check_shape],
                                        supports_context_parallel=True)
    def _wan_dist_cpu_flash_lse(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                enable_gqa=False, return_lse=False, _parallel_config=None):
        if _parallel_config is None:
            if not return_lse:   # cross-attention and every non-parallel call: plain SDPA, as `native`
                q, k, v = (x.transpose(1, 2) for x in (query, key, value))
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)
                return out.transpose(1, 2)
            return _cpu_flash_forward_op(None, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                         enable_gqa, True, _save_ctx=False)
        if attn_mask is not None and _parallel_config.context_parallel_config.ring_degree > 1:
            raise ValueError(f"{CPU_LSE}: attn_mask is not supported with ring attention")
        return _templated_context_parallel_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
            forward_op=_cpu_flash_forward_op, backward_op=_cpu_flash_backward_op, _parallel_config=_parallel_config)

    _REGISTERED = True


def library_backends() -> tuple[str, ...]:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    return tuple(b.value for b in AttentionBackendName if b in _AttentionBackendRegistry._backends)


def context_parallel_backends() -> tuple[str, ...]:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    register_cpu_lse_backend()
    return tuple(sorted(_AttentionBackendRegistry._supports_context_parallel))


def resolve_backend(name: str, device: torch.device, *, ulysses: int = 1, ring: int = 1,
                    field: str = "attention_backend") -> str:
    """The backend a run uses; ValueError naming field, value and rule when it cannot run here."""
    device = torch.device(device)
    if name == AUTO:
        if ring > 1:
            return CPU_LSE if device.type == "cpu" else "_native_cudnn"
        return "native"
    known = library_backends() + (CPU_LSE,)
    if name not in known:
        raise ValueError(f"{field}={name!r}: unknown attention backend; choose auto or one of {', '.join(known)}")
    if name != CPU_LSE:
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements
        try:
            _check_attention_backend_requirements(AttentionBackendName(name))
        except RuntimeError as e:
            raise ValueError(f"{field}={name!r}: not usable in this environment ({e})") from None
    if device.type == "cpu" and name not in CPU_BACKENDS:
        raise ValueError(f"{field}={name!r}: runs on GPUs only; on device=cpu use one of {', '.join(CPU_BACKENDS)}")
    if device.type == "cuda" and name in NOT_ON_CUDA:
        raise ValueError(f"{field}={name!r}: does not run on CUDA tensors; on a GPU use auto, native, flex, "
                         "_native_cudnn, _native_flash, flash, sage, ...")
    if ulysses * ring > 1 and name not in context_parallel_backends():
        raise ValueError(f"{field}={name!r}: does not support context parallelism (parallel.ulysses={ulysses}, "
                         f"parallel.ring={ring}); use one of {', '.join(context_parallel_backends())}")
    if ring > 1 and name in NO_LSE:
        lse = [b for b in context_parallel_backends() if b not in NO_LSE
               and (b in CPU_BACKENDS) == (device.type == "cpu")]
        raise ValueError(f"{field}={name!r}: parallel.ring={ring} merges partial attention with the log-sum-exp, "
                         f"which '{name}' does not return; on device={device.type} use one of {', '.join(lse)} "
                         "(or auto)")
    return name


def apply_backend(model, name: str) -> None:
    """Every attention processor of `model` dispatches to `name` (call BEFORE model.enable_parallelism, which checks
    the backend supports context parallelism)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    if name == CPU_LSE:
        register_cpu_lse_backend()
        model.reset_attention_backend()   # processors use the registry's active backend ...
        _AttentionBackendRegistry.set_active_backend(WanDistBackend.CPU_FLASH_LSE)   # ... which is this one
        return
    if name == "native":
        # the library default: freshly loaded processors already dispatch to the active backend; make sure that is
        # native again (a project or library backend set earlier in this process would otherwise stay active)
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
        return
    model.set_attention_backend(name)   # named on the processors (and made active) by the library itself
