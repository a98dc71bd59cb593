"""Yandex's diffusion-based quality estimator as a score table: `kedro run --pipelines diffusion_quality`."""
from alchemist_kedro.pipelines.diffusion_quality.pipeline import create_pipeline

__all__ = ["create_pipeline"]
