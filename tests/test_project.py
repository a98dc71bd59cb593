from kedro.framework.project import configure_project


def test_default_pipeline_is_the_main_job_and_nothing_that_trains_downstream_models():
    configure_project("alchemist_kedro")
    from alchemist_kedro.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    default = {node.name for node in pipelines["__default__"].nodes}
    for name in ("ingest", "features", "rater", "heuristics", "select"):
        assert {node.name for node in pipelines[name].nodes} <= default, name
    # (fit_alignment_model is shared on purpose: the alignment scorer and the evaluation use one model.)
    for name in ("train_t2i", "compare"):
        assert not ({node.name for node in pipelines[name].nodes} - {"fit_alignment_model"}) & default, name
    # The main job ends with a selection made from the rater's scores.
    assert "selection_manifest" in pipelines["__default__"].all_outputs()
    assert "rater_scores" in pipelines["__default__"].all_outputs()
