"""`kedro run --pipeline features`: samples → cached encoder features (FEATURE_SCHEMA), one shard per samples shard."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.features.nodes import compute_features


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                compute_features,
                inputs=["samples", "features_cache", "params:features"],
                outputs=["features", "features_metrics", "features_report"],
                name="compute_features",
            )
        ]
    )
