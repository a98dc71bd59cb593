"""samples -> raw scores per shard (resumable) -> one ranked score table per scorer -> histograms, Spearman.

Feature scorers (alignment_minilm_onsfw) form a second branch: features + the alignment model -> their score tables,
which join the same histograms and Spearman matrix. The alignment model is fitted by the evaluate pipeline's own
node (`fit_alignment_node`, the same node object, not a copy), so `kedro run` (heuristics without evaluate) fits it
and a run that also includes evaluate fits it once. It runs even when the scorer is switched off: Kedro has no
conditional nodes, and the fit on the val split costs seconds.
"""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.shared_nodes import fit_alignment_node
from alchemist_kedro.pipelines.heuristics.nodes import (
    plot_correlation,
    plot_histograms,
    rank_scores,
    score_feature_scorers,
    score_shards,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                score_shards,
                inputs=["samples", "heuristic_sample_uids", "heuristic_raw_scores_existing", "params:heuristics"],
                outputs=["heuristic_raw_scores", "heuristic_scorer_versions"],
                name="score_heuristic_shards",
            ),
            Node(
                rank_scores,
                inputs=["heuristic_raw_scores", "heuristic_sample_uids", "heuristic_scorer_versions"],
                outputs=["heuristic_scores", "heuristic_scores_summary"],
                name="rank_heuristic_scores",
            ),
            fit_alignment_node(),
            Node(
                score_feature_scorers,
                inputs=["features", "alignment_model", "params:heuristics"],
                outputs="heuristic_feature_scores",
                name="score_heuristic_features",
            ),
            Node(
                plot_histograms,
                inputs=["heuristic_scores", "heuristic_feature_scores", "params:heuristics"],
                outputs="heuristic_histograms",
                name="plot_heuristic_histograms",
            ),
            Node(
                plot_correlation,
                inputs=["heuristic_scores", "heuristic_feature_scores", "other_score_tables", "params:heuristics"],
                outputs=["heuristic_spearman_plot", "heuristic_spearman"],
                name="plot_heuristic_correlation",
            ),
        ]
    )
