"""samples (val split) + the T2I model -> fit table (K layer/token pairs) -> a score table over every sample.

Not part of `__default__`: it needs `kedro run --pipelines train_t2i` first (source t2i) and costs one UNet forward
per image. Its table lands in data/07_model_output/scores/, where select's defect report and compare find it.
"""
from kedro.pipeline import Node, Pipeline

from alchemist_kedro.pipelines.diffusion_quality.nodes import fit_diffusion_quality, score_diffusion_quality


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                fit_diffusion_quality,
                inputs=["samples", "diffusion_quality_t2i_model", "params:features.text_encoder",
                        "params:diffusion_quality"],
                outputs=["diffusion_quality_fit", "diffusion_quality_fit_plot", "diffusion_quality_fit_metrics"],
                name="fit_diffusion_quality",
            ),
            Node(
                score_diffusion_quality,
                inputs=["samples", "diffusion_quality_t2i_model", "params:features.text_encoder",
                        "diffusion_quality_fit", "params:diffusion_quality"],
                outputs=["diffusion_quality_scores", "diffusion_quality_summary"],
                name="score_diffusion_quality",
            ),
        ]
    )
