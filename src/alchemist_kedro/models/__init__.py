"""Plain torch models (no Kedro): the rater and the proxy T2I model."""
from alchemist_kedro.models.proxy import ProxyConfig, ProxyT2I, load_vae, per_sample_loss
from alchemist_kedro.models.rater import Rater, RaterConfig, rater_from_artifact, score_with_rater

__all__ = [
    "ProxyConfig",
    "ProxyT2I",
    "Rater",
    "RaterConfig",
    "load_vae",
    "per_sample_loss",
    "rater_from_artifact",
    "score_with_rater",
]
