"""Certified robustness: sound output bounds through auto_LiRPA and CROWN-IBP certified training.

``Verifier`` bounds a deterministic classifier's margins over a threat set (IBP, CROWN-IBP, CROWN,
alpha-CROWN). auto_LiRPA 0.3 is imported only through :mod:`robustsuite.certify.lirpa`, which
applies the torch-2 compatibility patches of :mod:`robustsuite.certify.lirpa_compat` first.
:class:`CertifiedTrainer` trains ``method: crown-ibp`` / ``method: ibp`` (settings
:class:`CertifiedTrainConfig`).
"""
from .bounds import METHODS, canonical_method, margins, spec_matrix
from .checks import check_boundable, is_stochastic
from .config import CertifiedTrainConfig, ScheduleConfig
from .trainer import CertifiedTrainer
from .verifier import VerificationResult, Verifier
from .complete import STATUSES, CompleteVerifier

__all__ = ["Verifier", "VerificationResult", "CompleteVerifier", "STATUSES", "METHODS", "canonical_method", "spec_matrix", "margins",
           "check_boundable", "is_stochastic", "CertifiedTrainConfig", "ScheduleConfig", "CertifiedTrainer"]
