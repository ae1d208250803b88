"""Config loading: types, unknown keys, overrides, YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from common.config import ConfigError, from_dict, load_config, parse_override, require, to_dict


@dataclass(frozen=True)
class Inner:
    rate_hz: float = 10.0
    name: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "inner.rate_hz must be > 0")


@dataclass(frozen=True)
class Outer:
    count: int = 3
    flag: bool = False
    size: tuple[int, int] = (84, 84)
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(Outer, {"count": 5, "inner": {"rate_hz": 20}})
    assert cfg.count == 5 and cfg.inner.rate_hz == 20.0 and isinstance(cfg.inner.rate_hz, float)
    assert cfg.size == (84, 84)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"rate": 1}})
    msg = str(err.value)
    assert "inner.rate" in msg and "name, rate_hz" in msg


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'cuont'.*count, flag, inner"):
        from_dict(Outer, {"cuont": 1})


@pytest.mark.parametrize(("data", "fragment"), [
    ({"count": "three"}, "'count' must be an integer"),
    ({"count": 1.5}, "'count' must be an integer"),
    ({"flag": 1}, "'flag' must be true or false"),
    ({"size": [1, 2, 3]}, "'size' must have 2 values"),
    ({"inner": {"name": "c"}}, "valid choices: 'a', 'b'"),
    ({"inner": 5}, "'inner' must be a mapping"),
    ({"inner": {"rate_hz": -1}}, "inner.rate_hz must be > 0"),
])
def test_wrong_types_and_values(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        from_dict(Outer, data)


def test_optional_accepts_null_and_value() -> None:
    assert from_dict(Outer, {"maybe": None}).maybe is None
    assert from_dict(Outer, {"maybe": 2}).maybe == 2.0


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    cfg = load_config(Outer, None, ["inner.rate_hz=5", "flag=true", "size=[64, 48]"])
    assert cfg.inner.rate_hz == 5.0 and cfg.flag and cfg.size == (64, 48)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Outer, None, ["novalue"])


def test_yaml_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("count: 7\ninner:\n  name: b\n")
    cfg = load_config(Outer, path)
    assert cfg.count == 7 and cfg.inner.name == "b"
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("count: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Outer, listy)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("count: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, evil)
