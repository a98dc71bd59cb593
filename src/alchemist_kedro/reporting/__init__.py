"""Reporting: figures and tables a user reads (data/08_reporting, MLflow artifacts). Pure functions: no Kedro, no
file I/O."""
from alchemist_kedro.reporting.defect_report import (
    StrategyEvaluation,
    defect_report,
    duplicate_report,
    evaluate_strategies,
    report_metrics,
)

__all__ = ["StrategyEvaluation", "defect_report", "duplicate_report", "evaluate_strategies", "report_metrics"]
