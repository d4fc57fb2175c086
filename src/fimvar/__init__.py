"""fimvar: the Fisher information of neural networks, and how far its estimates can be trusted.

Implements Soen & Sun, *On the Variance of the Fisher Information for Deep Learning*
(NeurIPS 2021, [A]) and *Trade-Offs of Diagonal Fisher Information Matrix Estimators*
(NeurIPS 2024, [B]).
"""

from fimvar.analyze import Analysis, analyze
from fimvar.errors import FimvarError
from fimvar.families import Bernoulli, Categorical, ExponentialFamily, Gaussian, Poisson
from fimvar.full import FullResult, analyze_full
from fimvar.hidden import HiddenFisher, hidden_fisher
from fimvar.plan import CostModel, Plan, plan
from fimvar.report import load
from fimvar.result import Bound, DiagonalResult, GroupBound
from fimvar.sampling import sample_labels
from fimvar.weight_norms import LayerNormBound, weight_norm_bounds

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Bernoulli",
    "Bound",
    "Categorical",
    "CostModel",
    "DiagonalResult",
    "ExponentialFamily",
    "FimvarError",
    "FullResult",
    "Gaussian",
    "GroupBound",
    "HiddenFisher",
    "LayerNormBound",
    "Plan",
    "Poisson",
    "analyze",
    "analyze_full",
    "hidden_fisher",
    "load",
    "plan",
    "sample_labels",
    "weight_norm_bounds",
]
