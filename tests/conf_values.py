"""Parameters as conf/base holds them, with a test's overrides deep-merged on top: conf is the one source of
default values, so tests start from it instead of restating (or silently depending on) defaults in code."""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"


@lru_cache(maxsize=None)
def _load(pipeline: str) -> dict:
    """parameters_<pipeline>.yml with `${globals:key}` values taken from globals.yml, as Kedro's config loader does."""
    globals_ = yaml.safe_load((CONF / "globals.yml").read_text())

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        # ${globals:key} and ${runtime_params:key,${globals:key}} (no runtime params in a unit test)
        match = re.fullmatch(r"\$\{(?:runtime_params:\w+,)?\$?\{?globals:(\w+)\}\}?", value) if isinstance(value, str) else None
        return globals_[match.group(1)] if match else value

    return resolve(yaml.safe_load((CONF / f"parameters_{pipeline}.yml").read_text()))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def base_params(path: str, **overrides) -> dict:
    """`base_params("rater.training", warmup_steps=3)`: the block at that dotted path of
    parameters_<first part>.yml, with overrides (nested dicts merge key by key)."""
    parts = path.split(".")
    block = _load(parts[0])
    for part in parts:
        block = block[part]
    return deep_merge(block, overrides)
