"""The decoder's value and its derivatives along k latent directions in one pass: forward mode by hand.

The dynamics take one Jacobian of the decoder per step. torch.func.jacfwd costs about seven decodes for
one direction on the CPU, most of it in forward-AD's Python decompositions (`python
benchmarks/dynamics.py`). Here the value and the k tangents travel stacked on the leading axis (row 0
the value, rows 1..k the derivatives) through the decoder's own weights: every matmul is shared by value
and tangents, only the nonlinear steps need a derivative rule, and k directions cost about 1 + k decodes.
tests/test_model.py checks the result against torch.func.jacfwd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurok.model import dual_quaternion
from neurok.model.cvae import Decoder, QueryFeatures
from neurok.model.layers import Block


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else torch.cat([y[:1] + layer.bias, y[1:]])  # the bias has no tangent


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    centred = x[:1] - x[:1].mean(-1, keepdim=True)
    inv_std = torch.rsqrt(centred.square().mean(-1, keepdim=True) + norm.eps)
    value = centred * inv_std
    d_centred = x[1:] - x[1:].mean(-1, keepdim=True)
    tangent = inv_std * (d_centred - value * (value * d_centred).mean(-1, keepdim=True))
    return torch.cat([value * norm.weight + norm.bias, tangent * norm.weight])


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU, as F.gelu and nn.GELU compute it by default."""
    v = x[:1]
    slope = 0.5 * (1 + torch.erf(v / math.sqrt(2))) + v * torch.exp(-0.5 * v.square()) / math.sqrt(
        2 * math.pi
    )
    return torch.cat([F.gelu(v), slope * x[1:]])


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a[:1] * b[:1], a[1:] * b[:1] + a[:1] * b[1:]])


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with tangents; a q with one row is a constant (the read's queries)."""
    scale = q.shape[-1] ** -0.5
    keys = k.transpose(-2, -1)
    scores = q[:1] @ keys[:1] * scale
    d_scores = q[:1] @ keys[1:] * scale
    if q.shape[0] > 1:
        d_scores = d_scores + q[1:] @ keys[:1] * scale
    p = scores.softmax(dim=-1)
    dp = p * (d_scores - (p * d_scores).sum(-1, keepdim=True))
    return torch.cat([p @ v[:1], dp @ v[:1] + p @ v[1:]])


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    t, n, w = x.shape
    return x.view(t, n, heads, w // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    t, h, n, d = x.shape
    return x.transpose(1, 2).reshape(t, n, h * d)


def _keys_values(x: torch.Tensor, to_kv: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, n, w = x.shape
    k, v = _linear(x, to_kv).view(t, n, 2, heads, w // heads).permute(2, 0, 3, 1, 4)
    return k, v


def _self_block(x: torch.Tensor, block: Block) -> torch.Tensor:
    """Block.forward without a context, with tangents."""
    heads = block.attn.heads
    h = _layer_norm(x, block.norm)
    k, v = _keys_values(h, block.attn.to_kv, heads)
    x = x + _linear(
        _merge_heads(_attention(_split_heads(_linear(h, block.attn.to_q), heads), k, v)), block.attn.out
    )
    a, gate = _linear(_layer_norm(x, block.norm_ff), block.ff.up).chunk(2, dim=-1)
    return x + _linear(_product(a, _gelu(gate)), block.ff.down)


def decode_with_tangents(
    decoder: Decoder, z: torch.Tensor, shape_tokens: torch.Tensor, features: QueryFeatures
) -> torch.Tensor:
    """One object: z and k directions stacked (1 + k, M, d), shape tokens (S, width), features of Q
    queries without a batch axis -> (1 + k, Q, C): the head's output (Decoder.head_output: the deformation
    for the displacement head) and its derivative along each direction.
    """
    lifted = _linear(z, decoder.lift)
    constant = torch.cat([shape_tokens[None], shape_tokens.new_zeros(len(z) - 1, *shape_tokens.shape)])
    x = torch.cat([constant, lifted], dim=1)
    for layer in decoder.layers:
        x = _self_block(x, layer)
    read = decoder.read
    k, v = _keys_values(_layer_norm(x, read.norm_context), read.attn.to_kv, read.attn.heads)
    y = _linear(_merge_heads(_attention(features.heads[None], k, v)), read.attn.out)
    y = torch.cat([y[:1] + features.embedded, y[1:]])
    if decoder.latent_code is not None:
        y = y + _linear(z.flatten(1), decoder.latent_code)[:, None]
    norm, *hidden, out = decoder.head
    y = _layer_norm(y, norm)
    for layer in hidden[::2]:  # (Linear, GELU) pairs
        y = _gelu(_linear(y, layer))
    y = _linear(y, out)
    if decoder.basis is None:
        return y
    # Linear in z: the basis does not depend on it, and z's map to the weights has no bias, so value and
    # tangents are the basis times their own weights.
    basis = decoder.basis.basis(shape_tokens[None], features.embedded[None])[0]  # (Q, 3, fields)
    weights = z.flatten(1) @ decoder.basis.coefficients.weight.T  # (1 + k, fields)
    return y + torch.einsum("qcf,tf->tqc", basis, weights)


# The dual-quaternion head's construction (dual_quaternion.from_head) and its blending at the vertices
# (blend, apply), with tangents: 12 ms for 2562 vertices and 8 directions, against 25 ms through
# torch.func.vmap(jvp), beside ~160 ms for the `base` decoder's own tangents (one CPU thread).


def _bilinear(product, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """product(a, b) with tangents, for a product linear in each argument."""
    return torch.cat([product(a[:1], b[:1]), product(a[1:], b[:1]) + product(a[:1], b[1:])])


def _over_norm(x: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
    """x / |of| (the norm over the last axis) with tangents."""
    norm = of[:1].norm(dim=-1, keepdim=True)
    value = x[:1] / norm
    d_norm = (of[:1] * of[1:]).sum(dim=-1, keepdim=True) / norm
    return torch.cat([value, (x[1:] - value * d_norm) / norm])


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def dual_quaternions_with_tangents(raw: torch.Tensor) -> torch.Tensor:
    """dual_quaternion.from_head with tangents: the head's output (1 + k, Q, 7) -> (1 + k, Q, 8)."""
    raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
    offset, translation = raw.split([4, 3], dim=-1)
    rotation = torch.cat([offset[:1] + raw.new_tensor(dual_quaternion.IDENTITY), offset[1:]])
    rotation = _over_norm(rotation, rotation)
    pure = torch.cat([torch.zeros_like(translation[..., :1]), translation], dim=-1)
    return torch.cat([rotation, 0.5 * _bilinear(dual_quaternion.multiply, pure, rotation)], dim=-1)


def driven_with_tangents(neighbours: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """The displacement of vertices (V, 3) under the blend (dual_quaternion.blend, then apply) of their
    nearest queries' dual quaternions (1 + k, V, K, 8), with tangents: (1 + k, V, 3)."""
    first = neighbours[0, :, :1, :4]
    opposite = (neighbours[0, ..., :4] * first).sum(dim=-1, keepdim=True) < 0  # the value's signs, for all
    mean = torch.where(opposite, -neighbours, neighbours).mean(dim=2)
    blended = _over_norm(mean, mean[..., :4])
    real, dual = blended[..., :4], blended[..., 4:]
    w, u = real[..., :1], real[..., 1:]
    vertices = vertices.expand_as(u)
    inner = _cross(u, vertices) + w * vertices  # linear in the real part: its tangents are rows like it
    rotation = 2 * _bilinear(_cross, u, inner)  # R v - v, as R v = v + 2 u x (u x v + w v)
    translation = 2 * _bilinear(dual_quaternion.multiply, dual, dual_quaternion.conjugate(real))[..., 1:]
    return rotation + translation
