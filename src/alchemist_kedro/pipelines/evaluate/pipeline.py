"""t2i_model + test split → generated images → fd_onsfw, alignment (ceiling: real test pairs)."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.evaluate.nodes import build_test_set, evaluate_t2i, fit_alignment_on_val


def fit_alignment_node() -> Node:
    """The one node that writes `alignment_model`, shared by every pipeline that needs the model.

    The heuristics pipeline (alignment_minilm_onsfw scorer) includes it too. Kedro's `Pipeline.__add__` dedupes
    nodes equal by (name, inputs, outputs), so a run combining both pipelines fits the model once; two nodes that
    differed in any of those would both claim the output and the combination would fail to build.
    """
    return Node(fit_alignment_on_val, ["select_samples_index", "features", "params:evaluate"], "alignment_model",
                name="fit_alignment_model")


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            fit_alignment_node(),
            Node(build_test_set, ["samples", "features", "t2i_model", "params:evaluate"], "evaluate_test_set",
                 name="evaluate_build_test_set"),
            Node(evaluate_t2i, ["t2i_model", "evaluate_test_set", "alignment_model", "params:evaluate"],
                 ["evaluate_metrics", "evaluate_report"], name="evaluate_t2i"),
        ]
    )
