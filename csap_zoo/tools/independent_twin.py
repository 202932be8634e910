"""The independent-mode twin of a CSAP head, and the fit of the query/key projections it adds.

A stage trained in propagate mode has no query/key weights. :func:`independent_twin_head` copies the head with
fresh q/k at those stages (nothing else differs); :func:`fit_qk` solves them by alternating least squares so that
the stage's own logits match the centred log of the propagated map, and :func:`refine_qk` refines them by L-BFGS on
the cross-entropy of the propagated rows. :mod:`csap_zoo.tools.analysis` uses the twin to ask how close an
independently computed map could be to the propagated one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn
from einops import rearrange

from ..models.heads.csap import CSAPHead, CSAPHeadConfig
from ..models.segmentor import Segmentor

__all__ = ["csap_head_of", "fit_qk", "independent_twin", "independent_twin_head", "refine_qk"]


def csap_head_of(model: Union[Segmentor, CSAPHead]) -> CSAPHead:
    """The CSAP head of ``model`` (or ``model`` itself), checked to have a shallow stage to compare."""
    head = model if isinstance(model, CSAPHead) else getattr(model, "decode_head", None)
    if not isinstance(head, CSAPHead):
        raise ValueError(f"attention analysis needs a CSAP head; this model has {type(head).__name__}")
    if len(head.blocks) < 2:
        raise ValueError("the CSAP head has a single stage: there is no shallow stage to compare")
    return head


def independent_twin_head(head: CSAPHead) -> CSAPHead:
    """A copy of ``head`` in which every non-deepest stage has its own query/key projections.

    Every weight of ``head`` is copied; the only parameters the copy adds are the q/k projections of the stages
    that propagate in ``head`` (freshly initialised: fit them with :func:`fit_qk`). Raises if anything else
    would differ.
    """
    head = csap_head_of(head)
    twin = copy.deepcopy(head)
    for i, mode in enumerate(head.attention_modes):
        if mode == "propagate":
            attn = twin.blocks[i].attn
            dim = attn.v.in_features
            qk_out = head.blocks[-1].attn.q.out_features
            ref = attn.v.weight
            attn.q = nn.Linear(dim, qk_out, device=ref.device, dtype=ref.dtype)
            attn.k = nn.Linear(dim, qk_out, device=ref.device, dtype=ref.dtype)
            for layer in (attn.q, attn.k):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
    twin.attention_modes = ("independent",) * len(head.attention_modes)
    added = set(twin.state_dict()) - set(head.state_dict())
    expected = {f"blocks.{i}.attn.{p}.{w}" for i, m in enumerate(head.attention_modes) if m == "propagate"
                for p in ("q", "k") for w in ("weight", "bias")}
    missing = set(head.state_dict()) - set(twin.state_dict())
    if missing or added != expected:
        raise RuntimeError(f"independent twin does not match the head: missing {sorted(missing)}, "
                           f"unexpected {sorted(added ^ expected)}")
    return twin


def independent_twin(model: Segmentor) -> Segmentor:
    """The segmentor with its head replaced by :func:`independent_twin_head` (the backbone is copied, and the
    config, if any, says ``attention="independent"``), e.g. to fine-tune an independent-mode model from a CSAP
    checkpoint."""
    twin_head = independent_twin_head(model)
    config = copy.deepcopy(model.config)
    if config is not None and isinstance(config.head, CSAPHeadConfig):
        config.head = dataclasses.replace(config.head, attention="independent")
    twin = Segmentor(copy.deepcopy(model.backbone), twin_head, model.feature_indices, model.in_chans, model.stride,
                     model.min_size, config=config, data_config=copy.deepcopy(model.data_config))
    return twin.train(model.training)


def _solve_bilinear(xs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], ts: Sequence[torch.Tensor],
                    scale: float, ridge: float) -> torch.Tensor:
    """argmin_W sum_i || scale * X_i W K_i^T - T_i ||^2 (+ ridge), W of shape (D, d), in float64.

    Uses vec(X W K^T) = (K kron X) vec(W) (column-major vec), so the normal equations are
    sum_i (K_i^T K_i kron X_i^T X_i) vec(W) = vec(sum_i X_i^T T_i K_i) / scale.
    """
    dim, rank = xs[0].shape[1], ks[0].shape[1]
    lhs = torch.zeros(dim * rank, dim * rank, dtype=torch.float64)
    rhs = torch.zeros(dim, rank, dtype=torch.float64)
    for x, k, t in zip(xs, ks, ts):
        lhs += torch.kron(k.T @ k, x.T @ x) * scale ** 2
        rhs += x.T @ t @ k * scale
    diag = lhs.diagonal().mean().clamp_min(1e-12)
    lhs += torch.eye(dim * rank, dtype=torch.float64) * ridge * diag
    vec = torch.linalg.solve(lhs, rhs.T.reshape(-1))
    return vec.reshape(rank, dim).T


def fit_qk(
        tokens: Sequence[torch.Tensor],
        cells: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        num_heads: int,
        qk_dim: int,
        scale: float,
        iterations: int = 20,
        ridge: float = 1e-6,
        tol: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Least-squares query/key projections whose attention logits match target log-maps.

    For each image ``i``: ``tokens[i]`` (N_i, C) are the stage's normalised query tokens, ``cells[i]`` (M, C) its
    pooled cells and ``targets[i]`` (heads, N_i, M) the log of the map to reproduce. Per head the logits are
    ``scale * (X Wq + bq) (C Wk)^T``; rows of targets and logits are centred over the cells (softmax ignores a
    row constant, which is also why the key bias is irrelevant and returned as zero). The bilinear problem is
    solved by alternating least squares (each half-step is an exact ridge-regularised linear least squares, so
    the residual never grows), starting from the cells' principal directions.

    Returns (q_weight (heads*qk_dim, C), q_bias (heads*qk_dim,), k_weight (heads*qk_dim, C), r2) in the layout of
    ``nn.Linear`` with the ``(h d)`` output order, and ``r2`` = 1 - residual / total sum of squares of the centred
    targets over all heads and images.
    """
    xs = [torch.cat([t.double(), torch.ones(t.shape[0], 1, dtype=torch.float64)], 1) for t in tokens]
    cs = [c.double() - c.double().mean(0, keepdim=True) for c in cells]
    ts = [t.double() - t.double().mean(-1, keepdim=True) for t in targets]
    dim = cs[0].shape[1]
    total = sum(float((t ** 2).sum()) for t in ts)
    # start: keys along the leading principal directions of the centred cells
    _, _, vh = torch.linalg.svd(torch.cat(cs, 0), full_matrices=False)
    init = vh[:qk_dim].T.contiguous()  # (C, d)
    wq = torch.zeros(num_heads, dim + 1, qk_dim, dtype=torch.float64)
    wk = torch.zeros(num_heads, dim, qk_dim, dtype=torch.float64)
    residual = 0.0
    for h in range(num_heads):
        wk_h = init.clone()
        th = [t[h] for t in ts]
        previous = math.inf
        for _ in range(max(1, iterations)):
            keys = [c @ wk_h for c in cs]
            wq_h = _solve_bilinear(xs, keys, th, scale, ridge)
            queries = [x @ wq_h for x in xs]
            wk_h = _solve_bilinear(cs, queries, [t.T for t in th], scale, ridge)
            err = sum(float(((scale * q @ (c @ wk_h).T - t) ** 2).sum()) for q, c, t in zip(queries, cs, th))
            if math.isfinite(previous) and previous - err <= tol * max(previous, 1e-12):
                break
            previous = err
        # balance the scale between queries and keys (the product is unchanged)
        q_rms = math.sqrt(sum(float((x @ wq_h).pow(2).mean()) for x in xs) / len(xs)) + 1e-12
        k_rms = math.sqrt(sum(float((c @ wk_h).pow(2).mean()) for c in cs) / len(cs)) + 1e-12
        alpha = math.sqrt(k_rms / q_rms)
        wq[h], wk[h] = wq_h * alpha, wk_h / alpha
        residual += err
    q_weight = rearrange(wq[:, :dim], "h c d -> (h d) c")
    q_bias = rearrange(wq[:, dim], "h d -> (h d)")
    k_weight = rearrange(wk, "h c d -> (h d) c")
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return q_weight.float(), q_bias.float(), k_weight.float(), r2


def refine_qk(
        attn: nn.Module,
        tokens: Sequence[torch.Tensor],
        cells: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        steps: int = 50,
) -> float:
    """Refine a stage's q/k in place by L-BFGS on the mean cross-entropy of the target maps under the stage's
    softmax, i.e. ``KL(target || own)`` up to the targets' entropy (the distillation objective; it weighs the
    cells a row attends to, where log-space least squares weighs every cell alike). Returns the final mean
    ``KL(target || own)`` per query row."""
    params = [attn.q.weight, attn.q.bias, attn.k.weight]
    saved = [p.detach().clone() for p in params]
    entropy = sum(float((t * torch.log(t.clamp_min(1e-30))).sum()) for t in targets)
    rows = sum(t.shape[0] * t.shape[1] for t in targets)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.zeros(())
        for x, c, t in zip(tokens, cells, targets):
            log_own = torch.log_softmax(_logits(attn, x, c), dim=-1)
            loss = loss - (t * log_own).sum()
        loss = loss / rows
        loss.backward()
        return loss

    try:
        with torch.enable_grad():
            optimizer.step(closure)
            loss = float(closure().detach())
    finally:
        for p in params:
            p.requires_grad_(False)
    final = loss + entropy / rows
    if not math.isfinite(final):  # keep the least-squares solution if the refinement diverged
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    return final


def _logits(attn: nn.Module, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(heads, N, M) logits of a stage's own q/k for one image's tokens (N, C) and cells (M, C)."""
    return attn.logits(tokens[None], cells[None])[0]
