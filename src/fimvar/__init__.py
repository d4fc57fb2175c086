"""fimvar: the Fisher information of neural networks, and how far its estimates can be trusted.

Implements Soen & Sun, *On the Variance of the Fisher Information for Deep Learning*
(NeurIPS 2021, [A]) and *Trade-Offs of Diagonal Fisher Information Matrix Estimators*
(NeurIPS 2024, [B]).
"""

from fimvar.analyze import Analysis, analyze
from fimvar.errors import FimvarError
from fimvar.families import Bernoulli, Categorical, ExponentialFamily, Gaussian, Poisson
from fimvar.result import Bound, DiagonalResult, GroupBound
from fimvar.sampling import sample_labels

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Bernoulli",
    "Bound",
    "Categorical",
    "DiagonalResult",
    "ExponentialFamily",
    "FimvarError",
    "Gaussian",
    "GroupBound",
    "Poisson",
    "analyze",
    "sample_labels",
]
