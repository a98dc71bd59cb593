"""selection + samples + features + the T2I model → queries (generations for test captions) → unlearning ground
truth → distilled attributor → mAP@k vs baselines, counterfactual retraining, sheets.

Not part of `__default__`: it needs `kedro run --pipelines train_t2i` first, and its cost is one pass over the
training set per query (see README "Data attribution").
"""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.attribute.nodes import (
    attribution_report,
    build_attribution_inputs,
    counterfactual_check,
    evaluate_attribution,
    generate_queries,
    train_distilled_attributor,
    unlearning_ground_truth,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(build_attribution_inputs,
                 ["selection_manifest", "samples", "features", "attribute_t2i_model", "params:attribute"],
                 "attribute_inputs", name="build_attribution_inputs"),
            Node(generate_queries, ["attribute_t2i_model", "attribute_inputs", "params:attribute"],
                 ["attribute_query_set", "attribute_queries"], name="generate_attribution_queries"),
            Node(unlearning_ground_truth,
                 ["attribute_t2i_model", "attribute_inputs", "attribute_query_set", "params:attribute"],
                 ["attribute_ground_truth", "attribute_ground_truth_summary"], name="unlearning_ground_truth"),
            Node(train_distilled_attributor,
                 ["attribute_inputs", "attribute_query_set", "attribute_ground_truth", "params:attribute"],
                 ["attributor_model", "attributor_training_history"], name="train_distilled_attributor"),
            Node(evaluate_attribution,
                 ["attribute_inputs", "attribute_query_set", "attribute_ground_truth", "attributor_model",
                  "attribute_ground_truth_summary", "params:attribute"],
                 ["attribute_map_table", "attribute_rankings", "attribute_metrics", "attribute_timing"],
                 name="evaluate_attribution"),
            Node(counterfactual_check,
                 ["attribute_t2i_model", "attribute_inputs", "attribute_query_set", "attribute_ground_truth",
                  "attribute_rankings", "params:attribute", "params:train_t2i.training"],
                 ["attribute_counterfactual", "attribute_counterfactual_metrics"], name="counterfactual_check"),
            Node(attribution_report,
                 ["attribute_inputs", "attribute_query_set", "attribute_ground_truth", "attribute_rankings",
                  "attribute_map_table", "attribute_counterfactual", "attribute_ground_truth_summary",
                  "attribute_timing", "params:attribute"],
                 ["attribute_sheet", "attribute_report"], name="attribution_report"),
        ]
    )
