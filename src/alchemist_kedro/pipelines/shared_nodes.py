"""Nodes that more than one pipeline includes. They live here, not in one pipeline, so no pipeline imports another.

Kedro's `Pipeline.__add__` dedupes nodes equal by (name, inputs, outputs), so a run combining two pipelines that
both include one of these runs it once; two nodes that differed in any of those would both claim the output and the
combination would fail to build.
"""
from kedro.pipeline import Node

from alchemist_kedro.evaluation.downstream import fit_alignment_on_val


def fit_alignment_node() -> Node:
    """The one node that writes `alignment_model` (evaluate, heuristics' alignment scorer, compare)."""
    return Node(fit_alignment_on_val, ["select_samples_index", "features", "params:evaluate"], "alignment_model",
                name="fit_alignment_model")
