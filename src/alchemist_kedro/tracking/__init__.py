"""MLflow helpers (no Kedro here): experiment kind, run names, the rater as a pyfunc model, dataset inputs.

The Kedro side (when to call them) is `alchemist_kedro.hooks` and `datasets.mlflow_rater_model`.
"""
