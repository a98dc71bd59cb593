"""comparison_report on hand-made arm results: mean ± CI per arm, and the best arm of each heuristic family."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from alchemist_kedro.pipelines.compare.nodes import comparison_report

ARMS = {"random": {}, "clarity": {"family": "clarity"}, "clarity_band": {"family": "clarity"}}


def _result(arm: str, fds: list[float]) -> dict:
    rows = [{"arm": arm, "seed": s, "ratio": 0.5, "strategy": "topk", "scorer": "x", "family": ARMS[arm].get("family", arm),
             "n_train": 10, "steps": 5, "train_seconds": 1.0, "fd_onsfw": fd, "alignment": 0.1,
             "alignment_ceiling": 0.2, "test_loss": 0.3, "test_loss_low_t": 0.2, "test_loss_mid_t": 0.3,
             "test_loss_high_t": 0.4, "test_caption_gain": 0.01, "fwd": 1.0} for s, fd in enumerate(fds)]
    image = np.zeros((4, 4, 3), np.uint8)
    return {"rows": rows, "grid": {"captions": ["a"], "images": [image]}}


def test_summary_means_cis_and_best_in_family():
    compare = {"preset": "p", "arms": ARMS, "presets": {"p": {"arms": list(ARMS), "seeds": [0, 1, 2]}}}
    runs, summary, metrics, children, plot, grids = comparison_report(
        compare, _result("random", [10, 12, 14]), _result("clarity", [20, 20, 20]), _result("clarity_band", [8, 9, 10]))
    plt.close(plot), plt.close(grids)
    assert list(summary["arm"]) == ["random", "clarity", "clarity_band"]
    row = summary.set_index("arm").loc["random"]
    # t(0.975, 2) = 4.303; std of (10, 12, 14) = 2; half-width = 4.303 * 2 / sqrt(3).
    assert row["fd_onsfw_mean"] == 12 and row["fd_onsfw_ci95"] == pytest.approx(4.303 * 2 / 3 ** 0.5, rel=1e-3)
    assert dict(zip(summary["arm"], summary["best_in_family"])) == {
        "random": True, "clarity": False, "clarity_band": True}
    assert len(runs) == 9 and len(children) == 9
    assert {c["tags"]["family"] for c in children} == {"random", "clarity"}
    assert metrics["clarity_band.fd_onsfw_mean"] == [{"step": 0, "value": 9.0}]
