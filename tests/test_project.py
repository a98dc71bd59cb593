from kedro.framework.project import configure_project


def test_registry_builds_default_pipeline():
    configure_project("alchemist_kedro")
    from alchemist_kedro.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    assert "__default__" in pipelines
