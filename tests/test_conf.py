"""The shipped conf/: the ablation envs redirect every rater output and change one parameter; presets name real arms."""
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from alchemist_kedro import settings
from alchemist_kedro.pipelines.compare.pipeline import ARMS

CONF = Path(__file__).resolve().parents[1] / "conf"
RATER_OUTPUTS = ("rater_model", "rater_training_history_table", "rater_per_sample_trace", "rater_raw_scores",
                 "rater_raw_scores_existing", "rater_scores")


def _loader(env: str) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(CONF), env=env, **{k: v for k, v in settings.CONFIG_LOADER_ARGS.items()
                                                      if k != "default_run_env"})


def _location(entry: dict) -> str:
    inner = entry.get("dataset") if isinstance(entry.get("dataset"), dict) and "filepath" in entry["dataset"] else entry
    return inner.get("filepath") or inner.get("path")


@pytest.mark.parametrize(("env", "changed"), [("rater_no_group", ("model", "use_group", False)),
                                               ("rater_eq9", ("training", "mode", "eq9"))])
def test_ablation_env_changes_one_rater_parameter_and_redirects_every_output(env, changed):
    base, ablation = _loader("local"), _loader(env)
    base_rater, rater = base["parameters"]["rater"], ablation["parameters"]["rater"]
    section, key, value = changed
    assert base_rater[section][key] != value and rater[section][key] == value
    # Soft merge: every other knob is the base one (a destructive merge would have dropped them).
    rater[section][key] = base_rater[section][key]
    assert rater == base_rater
    base_catalog, catalog = base["catalog"], ablation["catalog"]
    for name in RATER_OUTPUTS:
        assert _location(catalog[name]) != _location(base_catalog[name]), name
    suffix = env.removeprefix("rater_")
    assert _location(catalog["rater_scores"]) == f"data/07_model_output/scores/rater_{suffix}.parquet"
    # Within the env, scoring and its resume check read and write one folder (its own, not the main rater's).
    assert _location(catalog["rater_raw_scores"]) == _location(catalog["rater_raw_scores_existing"])


def test_every_preset_names_arms_that_exist_in_parameters_and_pipeline():
    compare = _loader("local")["parameters"]["compare"]
    assert set(compare["arms"]) == set(ARMS)
    for name, preset in compare["presets"].items():
        assert set(preset["arms"]) <= set(ARMS), name
        assert len(preset["seeds"]) >= (1 if name == "quick" else 3), name
