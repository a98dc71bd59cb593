"""alignment_model (fitted once) → one namespace per arm (select → train_t2i → evaluate, all seeds) → report.

Arms are static here (a Kedro pipeline is fixed before parameters are read); `compare.preset` picks which of them
run, and each arm's knobs live in parameters_compare.yml under compare.arms.<arm>. Run a single arm with
`--namespaces <arm>` plus the shared nodes, or trim a preset's arm list.
"""
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.compare.nodes import comparison_report, run_arm, verdicts_report
from alchemist_kedro.pipelines.shared_nodes import fit_alignment_node

ARMS = ("full", "random", "clarity", "clarity_band", "frequency", "frequency_band", "edge_density", "edge_density_band",
        "alignment", "nsfw", "aesthetic", "alchemist", "topk", "gsample", "no_group_mlp", "alchemist_eq9",
        "alchemist_small", "diffusion_quality", "diffusion_quality_small")
SHARED = {"compare_score_tables", "select_samples_index", "samples", "features", "alignment_model"}
PARAMS = {"params:compare", "params:train_t2i", "params:evaluate"}


def _arm_pipeline(arm: str) -> Pipeline:
    func = update_wrapper(partial(run_arm, arm), run_arm)
    node = Node(func, ["compare_score_tables", "select_samples_index", "samples", "features", "alignment_model",
                       "params:compare", "params:train_t2i", "params:evaluate"], "arm_results", name="run_arm")
    return Pipeline([node], inputs=SHARED, parameters=PARAMS, namespace=arm)


def create_pipeline(**kwargs) -> Pipeline:
    fit = fit_alignment_node()  # the same node as evaluate's and heuristics': combined pipelines fit once
    report = Node(
        comparison_report,
        ["params:compare", *[f"{arm}.arm_results" for arm in ARMS]],
        ["compare_runs", "compare_summary", "compare_metrics", "compare_child_runs", "compare_plot",
         "compare_sample_grids"],
        name="compare_report",
    )
    verdicts = Node(verdicts_report, ["compare_runs", "params:compare"], ["compare_paired", "compare_verdicts"],
                    name="compare_verdicts")
    return (Pipeline([fit]) + sum((_arm_pipeline(arm) for arm in ARMS), Pipeline([]))
            + Pipeline([report, verdicts]))
