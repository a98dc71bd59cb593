"""t2i_model + test split → generated images → fd_onsfw, alignment (ceiling: real test pairs)."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.evaluate.nodes import build_test_set, evaluate_t2i
from alchemist_kedro.pipelines.shared_nodes import fit_alignment_node


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
