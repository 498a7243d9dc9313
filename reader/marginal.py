"""Passage marginalization of the RAG paper (Lewis et al., 2020), in log space.

The retrieval scores of the top-k passages define the prior p(z|x) = softmax(score / τ). Both RAG
readers combine per-passage probabilities p(·|x, z) with it: RAG-Token per generated token,
RAG-Sequence per whole answer.
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def passage_prior(scores: Sequence[float], temperature: float) -> Tensor:
    """(k,) log p(z|x) = log softmax(score / τ)."""
    assert scores and temperature > 0, "need at least one passage and a positive temperature"
    return torch.log_softmax(torch.tensor(list(scores), dtype=torch.float32) / temperature, dim=0)


def marginal_next_token(log_prior: Tensor, logprobs: Tensor) -> Tensor:
    """RAG-Token: log Σ_z p(z|x) · p(y_t | x, z, y_<t). log_prior (k,), logprobs (..., k, V) -> (..., V)."""
    assert logprobs.shape[-2] == log_prior.shape[0], "one row of log-probabilities per passage"
    return torch.logsumexp(log_prior[:, None] + logprobs, dim=-2)


def marginal_sequence(log_prior: Tensor, loglik: Tensor) -> Tensor:
    """RAG-Sequence: log Σ_z p(z|x) · p(y | x, z). log_prior (k,), loglik (..., k) -> (...)."""
    assert loglik.shape[-1] == log_prior.shape[0], "one log-likelihood per passage"
    return torch.logsumexp(log_prior + loglik, dim=-1)


def posterior(log_prior: Tensor, loglik: Tensor) -> Tensor:
    """(k,) p(z|x, y) ∝ p(z|x) · p(y|x, z): each passage's share of an answer."""
    assert log_prior.shape == loglik.shape
    return torch.softmax(log_prior + loglik, dim=0)
