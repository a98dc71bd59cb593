"""kedro-mlflow's model dataset for the rater: saving logs the pyfunc model (tracking.rater_model) to the run.

Save takes what the rater pipeline's packaging node returns: the `rater_model` artifact plus its feature layout
({"state_dict", "config", "image_emb_dim", "text_emb_dim"}). Load (inherited) is mlflow.pyfunc.load_model of the
model saved last, or of `load_args.model_uri`.
"""
from __future__ import annotations

from typing import Any

from kedro_mlflow.io.models import MlflowModelTrackingDataset

from alchemist_kedro.tracking.rater_model import log_rater_model


class RaterMlflowModelDataset(MlflowModelTrackingDataset):
    def __init__(self, load_args: dict[str, Any] | None = None, save_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(flavor="mlflow.pyfunc", pyfunc_workflow="python_model", load_args=load_args,
                         save_args=save_args, metadata=metadata)

    def _save(self, model: dict) -> None:
        if not self._logging_activated:  # kedro-mlflow switched tracking off for this pipeline
            return
        self.model_info = log_rater_model(
            {"state_dict": model["state_dict"], "config": model["config"]},
            image_dim=model["image_emb_dim"], text_dim=model["text_emb_dim"],
            patch_dim=model.get("patch_emb_dim", 0), **self._save_args,
        )
        self._last_saved_model_uri = self.model_info.model_uri
