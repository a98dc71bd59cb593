"""Reporting: figures and tables a user reads (data/08_reporting, MLflow artifacts). Pure functions, no Kedro."""
