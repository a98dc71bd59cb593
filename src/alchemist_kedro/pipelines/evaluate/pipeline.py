"""t2i_model + test split → generated images → fd_onsfw, alignment (ceiling: real test pairs)."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.evaluate.nodes import build_test_set, evaluate_t2i, fit_alignment_on_val


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(fit_alignment_on_val, ["select_samples_index", "features", "params:evaluate"], "alignment_model",
                 name="evaluate_fit_alignment"),
            Node(build_test_set, ["samples", "features", "t2i_model", "params:evaluate"], "evaluate_test_set",
                 name="evaluate_build_test_set"),
            Node(evaluate_t2i, ["t2i_model", "evaluate_test_set", "alignment_model", "params:evaluate"],
                 ["evaluate_metrics", "evaluate_report"], name="evaluate_t2i"),
        ]
    )
