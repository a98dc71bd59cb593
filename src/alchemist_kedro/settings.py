"""Project settings."""
import os

from kedro.config import OmegaConfigLoader

# No network here or on most users' clusters: Kedro's telemetry must never try to phone home.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
# Models load from local paths only; a hub lookup would hang on a cluster with no network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from alchemist_kedro.hooks import TrackingHooks  # noqa: E402  (after the offline switches)

# Run names and tags, the experiment kind, the selection as the run's dataset input (hooks.py).
HOOKS = (TrackingHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "catalog": ["catalog*", "catalog*/**", "**/catalog*"],
    },
    # An env (conf/local, conf/rater_no_group, ...) overrides single parameters, not whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
    # Tests point the MLflow store at a temp dir through ${oc.env:...}.
    "custom_resolvers": {"oc.env": lambda name, default=None: os.environ.get(name, default)},
}
