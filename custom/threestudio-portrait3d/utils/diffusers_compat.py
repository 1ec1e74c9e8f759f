"""Make threestudio's ``stable-diffusion-vsd-guidance`` work with diffusers >= 0.30.

diffusers 0.30+ reduced ``LoRAAttnProcessor`` to an empty stub, so the VSD guidance's
``LoRAAttnProcessor(hidden_size=..., cross_attention_dim=...)`` raises TypeError (and in 0.27-0.29
it constructs but does nothing). :func:`apply_vsd_lora_compat` puts a working LoRA processor
(trainable low-rank deltas on q/k/v/out, as diffusers 0.19 had) into threestudio's VSD module
only. The UNet drops ``cross_attention_kwargs["scale"]`` before processors see it, so the scale is
carried by a ContextVar set around the guidance's ``forward_unet`` / ``_sample`` calls.
"""

import contextvars
import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_LORA_SCALE = contextvars.ContextVar("portrait3d_lora_scale", default=1.0)


class _LoRALinear(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, rank: int = 4, network_alpha: Optional[float] = None
    ):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self.network_alpha, self.rank = network_alpha, rank
        nn.init.normal_(self.down.weight, std=1 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.down.weight.dtype
        y = self.up(self.down(x.to(dtype)))
        if self.network_alpha is not None:
            y = y * (self.network_alpha / self.rank)
        return y.to(x.dtype)


class LoRAAttnProcessor(nn.Module):
    """Attention processor with trainable LoRA on q/k/v/out (diffusers-0.19 semantics, SDPA)."""

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: Optional[int] = None,
        rank: int = 4,
        network_alpha: Optional[float] = None,
    ):
        super().__init__()
        self.hidden_size, self.cross_attention_dim, self.rank = hidden_size, cross_attention_dim, rank
        self.to_q_lora = _LoRALinear(hidden_size, hidden_size, rank, network_alpha)
        self.to_k_lora = _LoRALinear(cross_attention_dim or hidden_size, hidden_size, rank, network_alpha)
        self.to_v_lora = _LoRALinear(cross_attention_dim or hidden_size, hidden_size, rank, network_alpha)
        self.to_out_lora = _LoRALinear(hidden_size, hidden_size, rank, network_alpha)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        scale: Optional[float] = None,
        **kwargs,
    ):
        s = _LORA_SCALE.get() if scale is None else scale
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states) + s * self.to_q_lora(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states) + s * self.to_k_lora(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states) + s * self.to_v_lora(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states) + s * self.to_out_lora(hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _carry_scale(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        cak = kwargs.get("cross_attention_kwargs") or {}
        token = _LORA_SCALE.set(float(cak.get("scale", 1.0)))
        try:
            return fn(*args, **kwargs)
        finally:
            _LORA_SCALE.reset(token)

    wrapper._portrait3d_lora_scale = True
    return wrapper


def apply_vsd_lora_compat() -> bool:
    """Patch threestudio's VSD guidance module if diffusers' LoRAAttnProcessor is the empty stub."""
    import inspect

    import threestudio.models.guidance.stable_diffusion_vsd_guidance as vsd
    from diffusers.models import attention_processor as ap

    if "hidden_size" in inspect.signature(ap.LoRAAttnProcessor.__init__).parameters:
        return False  # old diffusers with a working (or at least constructible) processor
    vsd.LoRAAttnProcessor = LoRAAttnProcessor
    cls = vsd.StableDiffusionVSDGuidance
    for name in ("forward_unet", "_sample"):
        f = getattr(cls, name)
        if not getattr(f, "_portrait3d_lora_scale", False):
            setattr(cls, name, _carry_scale(f))
    return True
