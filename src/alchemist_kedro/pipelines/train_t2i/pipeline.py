"""selection_manifest + samples + features → t2i_inputs → (t2i_model, history, summary, sample grid)."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.train_t2i.nodes import build_t2i_inputs, train_t2i_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(build_t2i_inputs, ["selection_manifest", "samples", "features", "params:train_t2i"], "t2i_inputs",
                 name="build_t2i_inputs"),
            Node(train_t2i_model, ["t2i_inputs", "params:train_t2i"],
                 ["t2i_model", "t2i_training_history", "t2i_training_summary", "t2i_sample_grid"],
                 name="train_t2i_model"),
        ]
    )
