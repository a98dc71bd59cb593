"""Wiring of the select pipeline."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.select import nodes


def create_pipeline(**kwargs) -> Pipeline:
    # `select_scores` is the score table of the scorer named by `select.scorer` (a runtime param read in the
    # catalog; default rater). Kedro forbids mixing `samples` with `samples@view`, so the column-restricted views
    # of the sample table have their own names; `samples` itself (a PartitionedDataset: loading it only lists the
    # shards) is passed to the index node so that node runs after ingest writes the table.
    return Pipeline(
        [
            Node(nodes.score_shards_with_rater,
                 ["rater_model", "features", "rater_raw_scores_existing", "params:select.rater_scoring"],
                 "rater_raw_scores", name="select_score_with_rater"),
            Node(nodes.rank_rater_scores, ["rater_raw_scores", "features", "rater_model"], "rater_scores",
                 name="select_rank_rater_scores"),
            Node(nodes.pool_scores, ["select_scores", "select_sample_index", "rater_scores"], "select_pool_scores",
                 name="select_pool_scores"),
            Node(nodes.deduplicate_pool,
                 ["select_pool_scores", "select_sample_index", "select_embeddings", "params:select.dedup"],
                 ["select_candidates", "select_duplicates"], name="select_deduplicate"),
            Node(nodes.select_from_scores, ["select_candidates", "params:select"], "selection_manifest",
                 name="select_from_scores"),
            Node(nodes.build_sample_index, ["select_samples_index", "samples"], "select_sample_index",
                 name="select_build_sample_index"),
            Node(nodes.defect_kind_report,
                 ["selection_manifest", "select_pool_scores", "select_sample_index", "heuristic_scores",
                  "heuristic_feature_scores", "params:select.defect_report", "select_duplicates"],
                 ["selection_defect_report", "selection_defect_metrics"], name="select_defect_report"),
            Node(nodes.build_ledger, ["selection_manifest", "select_sample_index", "quarantine", "select_duplicates"],
                 "ledger",
                 name="select_build_ledger"),
            Node(nodes.selected_uid_list, "selection_manifest", "selected_uids", name="select_write_uid_list"),
            Node(nodes.datacomp_subset_file, "selection_manifest", "selected_uids_datacomp",
                 name="select_write_datacomp_subset"),
            Node(nodes.selection_metrics, ["selection_manifest", "select_sample_index"], "selection_metrics",
                 name="select_log_metrics"),
            Node(nodes.plot_score_histogram, ["selection_manifest", "params:select"], "selection_score_histogram",
                 name="select_plot_score_histogram"),
            Node(nodes.plot_training_dynamics, ["rater_per_sample_trace", "selection_manifest"],
                 "selection_training_dynamics", name="select_plot_training_dynamics"),
            Node(nodes.plot_contact_sheets,
                 ["selection_manifest", "select_sample_index", "select_samples_images", "params:select"],
                 "selection_contact_sheets", name="select_plot_contact_sheets"),
            Node(nodes.selected_shards,
                 ["selection_manifest", "select_sample_index", "select_samples_images", "params:select"],
                 "selected_shards", name="select_write_shards"),
        ]
    )
