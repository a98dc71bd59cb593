"""Mean ± 95% t-interval over seeds, on numbers worked out by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from alchemist_kedro.evaluation import mean_ci95, summarise_over_seeds


def test_mean_ci95_known_values():
    # values 1, 2, 3: mean 2, sample sd 1, sem 1/sqrt(3), t(0.975, df=2) = 4.302653
    mean, half_width = mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_ci95_edge_cases():
    assert mean_ci95([5.0]) == (5.0, pytest.approx(float("nan"), nan_ok=True))
    assert mean_ci95([4.0, 4.0, 4.0]) == (4.0, 0.0)
    assert mean_ci95([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)  # a failed seed does not poison the mean
    assert all(np.isnan(mean_ci95([])))


def test_summarise_over_seeds_groups_by_arm():
    runs = pd.DataFrame({"arm": ["random", "random", "random", "alchemist", "alchemist"],
                         "seed": [0, 1, 2, 0, 1], "fd_onsfw": [1.0, 2.0, 3.0, 10.0, 12.0]})
    table = summarise_over_seeds(runs, "arm", ["fd_onsfw"]).set_index("arm")
    assert table.loc["random", "fd_onsfw_mean"] == pytest.approx(2.0)
    assert table.loc["random", "fd_onsfw_ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    # 10, 12: sd sqrt(2), sem 1, t(0.975, df=1) = 12.7062
    assert table.loc["alchemist", "fd_onsfw_ci95"] == pytest.approx(12.7062047, rel=1e-6)
    assert table.loc["alchemist", "n_seeds"] == 2
    with pytest.raises(ValueError, match="alignment"):
        summarise_over_seeds(runs, "arm", ["alignment"])
