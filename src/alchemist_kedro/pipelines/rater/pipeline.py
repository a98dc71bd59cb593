"""samples + features → rater_inputs → (rater_model, history, per-sample trace)."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs, rater_model_for_mlflow, train_rater
from alchemist_kedro.pipelines.shared_nodes import fit_alignment_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            fit_alignment_node(),  # the rater's optional alignment input (model.alignment_feature)
            Node(
                build_rater_inputs,
                inputs=["samples", "features", "params:rater"],
                outputs="rater_inputs",
                name="build_rater_inputs",
            ),
            Node(
                train_rater,
                inputs=["rater_inputs", "alignment_model", "params:rater"],
                outputs=[
                    "rater_model",
                    "rater_training_history",
                    "rater_training_history_table",
                    "rater_per_sample_trace",
                ],
                name="train_rater",
            ),
            Node(
                rater_model_for_mlflow,
                inputs=["rater_model", "features"],
                outputs="rater_mlflow_model",
                name="log_rater_mlflow_model",
            ),
        ]
    )
