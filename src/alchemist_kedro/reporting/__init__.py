"""Evaluation reports over score tables and selections (library code: no kedro imports, no file I/O)."""
from alchemist_kedro.reporting.defect_report import (
    StrategyEvaluation,
    defect_report,
    duplicate_report,
    evaluate_strategies,
    report_metrics,
)

__all__ = ["StrategyEvaluation", "defect_report", "duplicate_report", "evaluate_strategies", "report_metrics"]
