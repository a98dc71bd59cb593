"""conf/openclipart: generated from conf/base, current, and it moves every data path off the emoji run's."""
from pathlib import Path

import yaml
from kedro.config import OmegaConfigLoader

from alchemist_kedro import settings
from alchemist_kedro.corpus.conf_env import env_files, moved

CONF = Path(__file__).resolve().parents[1] / "conf"
NAME = "openclipart"


def _loader(env: str) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(CONF), env=env, **{k: v for k, v in settings.CONFIG_LOADER_ARGS.items()
                                                      if k != "default_run_env"})


def _data_paths(value, trail=()):
    if isinstance(value, str) and value.startswith("data/"):
        yield trail, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _data_paths(item, trail + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _data_paths(item, trail + (index,))


def test_the_committed_env_is_what_the_generator_writes_from_conf_base():
    for file_name, text in env_files(CONF, NAME).items():
        committed = (CONF / NAME / file_name).read_text(encoding="utf-8")
        assert committed == text, (
            f"conf/{NAME}/{file_name} is stale: run `python -m alchemist_kedro.corpus.conf_env --name {NAME}`"
        )


def test_every_data_path_moves_and_raw_pairs_reads_the_openclipart_shards():
    base, env = _loader("local"), _loader(NAME)
    base_catalog, catalog = base["catalog"], env["catalog"]
    assert set(catalog) == set(base_catalog)
    base_paths = {path for entry in base_catalog.values() for _, path in _data_paths(entry)}
    for name, entry in catalog.items():
        if name == "raw_pairs":
            continue
        for trail, path in _data_paths(base_catalog[name]):
            value = entry
            for key in trail:
                value = value[key]
            assert value == moved(path, NAME) and value not in base_paths, (name, trail)
    sources = catalog["raw_pairs"]["sources"]
    assert [(s["path"], s["split"]) for s in sources] == [
        (f"data/01_raw/{NAME}/wds/{split}", split) for split in ("pool", "val", "test")
    ]
    rater, base_rater = env["parameters"]["rater"], base["parameters"]["rater"]
    assert rater["checkpoint_dir"] == moved(base_rater["checkpoint_dir"], NAME) != base_rater["checkpoint_dir"]
    # Soft merge: everything but the paths is the base configuration.
    assert {k: v for k, v in rater.items() if k != "checkpoint_dir"} == {
        k: v for k, v in base_rater.items() if k != "checkpoint_dir"
    }


def test_mlflow_logs_to_its_own_experiment():
    base = yaml.safe_load((CONF / "base" / "mlflow.yml").read_text())
    env = yaml.safe_load((CONF / NAME / "mlflow.yml").read_text())
    assert env["tracking"]["experiment"]["name"] == base["tracking"]["experiment"]["name"] + "_" + NAME
    env["tracking"]["experiment"]["name"] = base["tracking"]["experiment"]["name"]
    assert env["tracking"] == base["tracking"]
