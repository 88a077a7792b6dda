import os

os.environ.setdefault("CFGEDU_FAST", "1")  # nbval kernels inherit it: notebooks run their small fast mode

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # for this process only: notebook kernels keep their own inline backend
import pytest  # noqa: E402
import torch  # noqa: E402

from cfgedu.core.tensors import make_generator  # noqa: E402
from cfgedu.toy.mixture import GaussianMixture  # noqa: E402


@pytest.fixture
def generator():
    return make_generator(0)


@pytest.fixture
def toy():
    return GaussianMixture.three_gaussians()


@pytest.fixture
def anisotropic():
    """Three components with full, distinct covariances and unequal weights."""
    covariances = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.6]], [[0.3, 0.0], [0.0, 0.1]]])
    return GaussianMixture([0.5, 0.3, 0.2], [[0.0, 1.0], [-1.0, -0.5], [1.2, -0.3]], covariances)
