import pytest

from tests import tiny_project


@pytest.fixture(scope="session")
def selection_project(tmp_path_factory):
    """A tiny project after one real `kedro run --pipelines rater,select` (shared by the MLflow and notebook tests)."""
    root = tmp_path_factory.mktemp("selection_project")
    project = tiny_project.build(root)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    result = tiny_project.kedro_run(project, tracking_uri, "--pipelines", "rater,select")
    return {"project": project, "tracking_uri": tracking_uri, "log": result.stdout + result.stderr}
