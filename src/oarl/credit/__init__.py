"""oarl.credit: framework-free OAR credit assignment on torch tensors (no TRL imports).

token_advantages(...)        the entry point: (B,) advantages -> (B, T) per-token advantages
segment_completions(...)     reasoning / conclusion / answer / rest token masks
perturbation_importance      OAR-P          gradient_importance   OAR-G
entropy_importance           policy-entropy baseline
grail_saliency, grail_weights  GRAIL (gradient saliency of the answer, z-scored weights)
rollout_importance           Monte-Carlo step credit from a sampler and a scorer (the reference)
bilevel_weights              Bi-Level reshaping of importances into weights
"""

from oarl.answer import FinalAnswer, find_final_answer

from .bilevel import bilevel_weights
from .config import ESTIMATORS, OUTCOMES, CreditConfig
from .core import CreditOutput, token_advantages
from .entropy import entropy_importance
from .gradient import gradient_importance
from .grail import grail_saliency, grail_weights
from .perturbation import perturbation_importance
from .rollout import rollout_importance
from .segments import Segments, segment_completions

__all__ = [
    "CreditConfig",
    "CreditOutput",
    "ESTIMATORS",
    "FinalAnswer",
    "OUTCOMES",
    "Segments",
    "bilevel_weights",
    "entropy_importance",
    "find_final_answer",
    "gradient_importance",
    "grail_saliency",
    "grail_weights",
    "perturbation_importance",
    "rollout_importance",
    "segment_completions",
    "token_advantages",
]
