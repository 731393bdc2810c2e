"""Multi-head causal self-attention with rotary position embeddings (RoPE), in NumPy.

Per head (dimension d): rotate q and k by position (rotate-half convention, frequencies
theta_i = 10000 ** (-2 i / d)), scores = q k^T / sqrt(d), a causal mask sets future positions
to -inf before a numerically stable softmax, then weights @ v; heads are concatenated and
projected by wo.
"""
import numpy as np


def rope(x: np.ndarray) -> np.ndarray:
    """x: [T, H, d] -> rotated, position t = row index."""
    t, _, d = x.shape
    half = d // 2
    freqs = 10000.0 ** (-np.arange(half) * 2.0 / d)
    angles = np.arange(t)[:, None] * freqs[None, :]  # [T, d/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def multi_head_attention(x, wq, wk, wv, wo, n_heads, causal=True):
    t, dim = x.shape
    d = dim // n_heads
    q = rope((x @ wq).reshape(t, n_heads, d))
    k = rope((x @ wk).reshape(t, n_heads, d))
    v = (x @ wv).reshape(t, n_heads, d)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)
    if causal:
        mask = np.triu(np.ones((t, t), dtype=bool), k=1)
        scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.einsum("hts,shd->thd", weights, v).reshape(t, dim)
    return out @ wo
