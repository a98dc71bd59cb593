"""The one registry type, and that scorers, encoders, strategies and defect makers all sit behind it."""
import pytest

from alchemist_kedro.registry import Registry, UnknownNameError


def test_register_get_names_and_the_two_errors():
    things = Registry("widget")

    @things.register("b")
    def b():
        return "b"

    things.add("a", len)
    assert things.get("b") is b and things["a"] is len and list(things) == ["b", "a"] and things.names() == ["a", "b"]
    assert "a" in things and "c" not in things and len(things) == 2
    things.add("a", len)  # the same object again: a no-op (a module imported twice)
    with pytest.raises(ValueError, match="widget name 'a' is already registered by len"):
        things.add("a", str)
    with pytest.raises(KeyError, match=r"unknown widget 'c'; registered widgets: \['a', 'b'\]"):
        things.get("c")
    with pytest.raises(ValueError, match="unknown widget"):  # a bad conf value reads as one too
        things["c"]
    assert str(UnknownNameError("plain message")) == "plain message"
    ordered = Registry.of("kind", {"z": 1, "y": 2}, plural="kinds")
    assert list(ordered) == ["z", "y"] and ordered.names() == ["y", "z"]


def test_project_registries_share_the_type_and_its_rules():
    from alchemist_kedro.corpus.defects import DEFECT_MAKERS
    from alchemist_kedro.encoders.base import IMAGE_ENCODERS, TEXT_ENCODERS, get_text_encoder
    from alchemist_kedro.scorers import get_scorer
    from alchemist_kedro.scorers.base import SCORERS
    from alchemist_kedro.selection.strategies import STRATEGIES, register_strategy, select_indices, Ranking
    import numpy as np

    for registry in (DEFECT_MAKERS, IMAGE_ENCODERS, TEXT_ENCODERS, SCORERS, STRATEGIES):
        assert isinstance(registry, Registry) and len(registry) > 0
    assert {"open_nsfw", "clip"} <= set(IMAGE_ENCODERS) and "minilm" in TEXT_ENCODERS and "clarity" in SCORERS
    with pytest.raises(ValueError, match="strategy name 'topk' is already registered"):
        register_strategy("topk")(lambda ranking, k, rng, allow_fewer=False: np.arange(k))
    with pytest.raises(ValueError, match="unknown strategy 'best'; registered strategies: .*'topk'"):
        select_indices(Ranking(np.zeros(3)), "best", 1)
    with pytest.raises(ValueError, match="unknown text encoder 'bert'; registered text encoders"):
        get_text_encoder("bert")
    with pytest.raises(KeyError, match="unknown scorer 'sharpness'; registered scorers"):
        get_scorer("sharpness")
