"""Ingestion: user sources -> normalised rows -> ledger (quarantine, counts, report) + sample table."""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.ingest.nodes import build_ledger, build_sample_table, normalise_pairs


def create_pipeline(**kwargs) -> Pipeline:
    # `ingested_pairs@full` / `@index` are one folder read two ways (transcoding): Kedro orders the
    # ledger after the write, and the ledger reads only the small columns.
    return Pipeline(
        [
            Node(normalise_pairs, ["raw_pairs", "params:ingest"], "ingested_pairs@full", name="normalise_pairs"),
            Node(
                build_ledger,
                ["raw_pairs", "ingested_pairs@index"],
                ["quarantine", "ingest_counts", "ingest_report"],
                name="build_ledger",
            ),
            Node(build_sample_table, "ingested_pairs@full", "samples", name="build_sample_table"),
        ]
    )
