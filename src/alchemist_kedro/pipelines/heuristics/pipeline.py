"""samples -> raw scores per shard (resumable) -> one ranked score table per scorer -> histograms, Spearman."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.heuristics.nodes import plot_correlation, plot_histograms, rank_scores, score_shards


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
            Node(
                plot_histograms,
                inputs=["heuristic_scores", "params:heuristics"],
                outputs="heuristic_histograms",
                name="plot_heuristic_histograms",
            ),
            Node(
                plot_correlation,
                inputs=["heuristic_scores", "other_score_tables", "params:heuristics"],
                outputs=["heuristic_spearman_plot", "heuristic_spearman"],
                name="plot_heuristic_correlation",
            ),
        ]
    )
