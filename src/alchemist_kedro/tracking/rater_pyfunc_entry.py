"""MLflow "model from code" entry point of the rater pyfunc model (see rater_model.py); run by MLflow at load."""
from mlflow.models import set_model

from alchemist_kedro.tracking.rater_model import RaterPyfunc

set_model(RaterPyfunc())
