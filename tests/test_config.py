"""Typed config checks (corun.config): mappings such as ``model.kwargs`` and ``loss.perceptual_layers``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from corun.config import ConfigError, check_type, from_dict, load_config


@dataclass
class Section:
    layers: dict[str, float] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


def test_typed_mappings_check_keys_and_values():
    s = from_dict(Section, {"layers": {"relu1_1": 1, "relu2_1": "1e-4"}, "kwargs": {"width": 8, "act": [1, "x"]}})
    assert s.layers == {"relu1_1": 1, "relu2_1": 1e-4} and s.kwargs == {"width": 8, "act": [1, "x"]}
    with pytest.raises(ConfigError, match=r"layers.relu1_1: expected a number, got 'big'"):
        from_dict(Section, {"layers": {"relu1_1": "big"}})
    with pytest.raises(ConfigError, match="kwargs: expected a mapping, got 3"):
        from_dict(Section, {"kwargs": 3})
    with pytest.raises(ConfigError, match=r"a key\): expected a string, got 1"):
        check_type({1: 2}, dict[str, Any], "kwargs")


def test_overrides_reach_into_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kwargs: {width: 8}\n")
    s = load_config(Section, path, ["kwargs.depth=3", "kwargs.width=16", "name=x"])
    assert s.kwargs == {"width": 16, "depth": 3} and s.name == "x"
