"""kedro viz's layered view: every catalog entry of every conf env names the data layer of the folder it lives in."""
import re
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project
from kedro.io import DataCatalog

from alchemist_kedro import settings

CONF = Path(__file__).resolve().parents[1] / "conf"
FOLDER_LAYERS = {"01_raw": "raw", "02_intermediate": "intermediate", "03_primary": "primary", "04_feature": "feature",
                 "05_model_input": "model_input", "06_models": "models", "07_model_output": "model_output",
                 "08_reporting": "reporting"}
ENVS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


def _catalog_config(env: str) -> dict:
    args = {k: v for k, v in settings.CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    return OmegaConfigLoader(str(CONF), env=env, **args)["catalog"]


def _locations(entry) -> list[str]:
    """Every data/ path an entry names (its own, a wrapped dataset's, a source list's)."""
    text = repr(entry)
    return re.findall(r"data/(0\d_[a-z_]+)", text)


@pytest.mark.parametrize("env", ENVS)
def test_every_catalog_entry_has_the_layer_of_its_folder(env):
    catalog = _catalog_config(env)
    assert catalog, env
    for name, entry in catalog.items():
        if name.startswith("_"):
            continue  # YAML anchors
        layer = ((entry.get("metadata") or {}).get("kedro-viz") or {}).get("layer")
        assert layer in FOLDER_LAYERS.values(), f"{env}: {name} has no kedro-viz layer"
        folders = set(_locations({k: v for k, v in entry.items() if k != "scores_dir"}))
        if folders:
            assert {FOLDER_LAYERS[f] for f in folders} == {layer}, f"{env}: {name} is in {folders}, layer {layer}"


def test_every_dataset_the_pipelines_use_is_a_catalog_entry_with_a_layer():
    """In-memory intermediates too: a dataset missing from the catalog is drawn outside every layer."""
    configure_project("alchemist_kedro")
    from alchemist_kedro.pipeline_registry import register_pipelines

    catalog = DataCatalog.from_config(_catalog_config("local"))
    names = set().union(*(p.datasets() for p in register_pipelines().values()))
    unlayered = sorted(n for n in names if not n.startswith("params:") and n != "parameters"
                       and not ((getattr(catalog.get(n), "metadata", None) or {}).get("kedro-viz") or {}).get("layer"))
    assert not unlayered
