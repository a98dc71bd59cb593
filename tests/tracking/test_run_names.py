"""Run names and tags name only what the run's pipelines read."""
from alchemist_kedro.tracking import runs

PARAMETERS = {"select": {"scorer": "clarity", "strategy": "topk", "ratio": None, "count": 300},
              "rater": {"training": {"mode": "eq6"}}, "compare": {"preset": "quick"}}


def test_names_follow_the_parameter_groups_the_pipeline_reads():
    assert runs.run_name(["ingest"], PARAMETERS, runs.parameter_groups(["params:ingest"])) == "ingest"
    uses = runs.parameter_groups(["params:select", "params:rater.training", "params:ingest"])
    assert uses == {"select", "rater", "ingest"}
    assert runs.run_name(["__default__"], PARAMETERS, uses, env="rater_eq6") == \
        "main · rater eq6 · select clarity topk count 300 · env rater_eq6"
    assert runs.run_name(None, PARAMETERS, {"compare"}, env="local") == "main · preset quick"


def test_tags_only_for_runs_that_select():
    assert runs.run_tags(PARAMETERS, {"ingest"}) == {}
    assert runs.run_tags(PARAMETERS, {"select"}) == {"strategy": "topk", "scorer": "clarity", "count": "300"}
