"""fimvar: the Fisher information of neural networks, and how far its estimates can be trusted.

Implements Soen & Sun, *On the Variance of the Fisher Information for Deep Learning*
(NeurIPS 2021, [A]) and *Trade-Offs of Diagonal Fisher Information Matrix Estimators*
(NeurIPS 2024, [B]).

The package is layered (docs/architecture in the README): ``families`` (output distributions)
→ ``engine`` (derivatives) → ``estimators`` (the mathematics, with ``bounds``) → ``results``
→ ``analysis`` (the driver of every mode) → ``recipes`` (EWC, merging, Laplace) → ``report``
(tables, files, figures) → ``app`` (the command line).
"""

from fimvar import report as _report  # registers the presentation of every result type
from fimvar.analysis.audit import audit
from fimvar.analysis.diagonal import Analysis, analyze
from fimvar.analysis.fisher import fisher_diagonal
from fimvar.analysis.full import analyze_full
from fimvar.analysis.hidden import hidden_fisher
from fimvar.analysis.sampled import analyze_sampled
from fimvar.analysis.weight_norms import weight_norm_bounds
from fimvar.errors import FimvarError
from fimvar.estimators.design import CostModel, Target
from fimvar.estimators.labels import sample_labels
from fimvar.families import Bernoulli, Categorical, ExponentialFamily, Gaussian, Poisson
from fimvar.recipes import EWCPenalty, FisherMerge, ewc_penalty, fisher_merge
from fimvar.report import load
from fimvar.results.audit import AuditResult, EstimatorAudit
from fimvar.results.diagonal import Bound, DiagonalResult, GroupBound
from fimvar.results.full import FullResult
from fimvar.results.hidden import HiddenFisher, HiddenResult
from fimvar.results.plan import Plan, plan
from fimvar.results.sampled import SampledResult
from fimvar.results.weight_norms import LayerNormBound, WeightNormResult

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AuditResult",
    "Bernoulli",
    "Bound",
    "Categorical",
    "CostModel",
    "DiagonalResult",
    "EWCPenalty",
    "EstimatorAudit",
    "ExponentialFamily",
    "FimvarError",
    "FisherMerge",
    "FullResult",
    "Gaussian",
    "GroupBound",
    "HiddenFisher",
    "HiddenResult",
    "LayerNormBound",
    "Plan",
    "Poisson",
    "SampledResult",
    "Target",
    "WeightNormResult",
    "analyze",
    "analyze_full",
    "analyze_sampled",
    "audit",
    "ewc_penalty",
    "fisher_diagonal",
    "fisher_merge",
    "hidden_fisher",
    "load",
    "plan",
    "sample_labels",
    "weight_norm_bounds",
]
del _report
