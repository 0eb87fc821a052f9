"""Recipes and overrides a careless or hostile user can write: NaN and infinities, YAML aliases ("billion
laughs"), duplicate keys, deep nesting, huge values in messages, files that are not recipes."""

from __future__ import annotations

import os
import re
import sys

import pytest

from splitattn.engine import load_config
from splitattn.engine.config import parse_override, read_yaml_config, save_config
from splitattn.errors import ConfigError

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key, value, shown", [
    ("hflip", NAN, "'hflip' on the command line must be a finite number, got nan"),
    ("momentum", NAN, "'momentum' on the command line must be a finite number, got nan"),
    ("color_jitter", INF, "'color_jitter' on the command line must be a finite number, got inf"),
    ("lr", -INF, "'lr' on the command line must be a finite number, got -inf"),  # float or null
    ("rrc_scale", [NAN, 1.0], "'rrc_scale[0]' on the command line must be a finite number, got nan"),
    ("mean", (0.5, INF, 0.5), "'mean[1]' on the command line must be a finite number, got inf"),
    ("model_kwargs", {"drop_rate": NAN}, "'model_kwargs.drop_rate' on the command line must be a finite"),
])
def test_nan_and_inf_are_refused_in_every_float_key(key, value, shown):
    with pytest.raises(ConfigError) as e:
        load_config("classification", overrides={key: value})
    assert str(e.value).startswith(f"config key {shown}")


def test_nan_and_inf_from_files_and_key_value_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nrrc_scale: [.nan, 1]\n")
    where = re.escape(str(recipe))
    with pytest.raises(ConfigError, match=rf"^config key 'rrc_scale\[0\]' in config file {where} must be a "
                                          r"finite number, got nan$"):
        load_config(None, recipe)
    recipe.write_text("task: detection\nwarmup_factor: .inf\n")
    with pytest.raises(ConfigError, match=r"'warmup_factor' in config file .* must be a finite number, "
                                          "got inf"):
        load_config(None, recipe)
    overrides = dict(parse_override(t) for t in ["hflip=.nan", "epochs=3"])
    with pytest.raises(ConfigError, match=r"^config key 'hflip' on the command line must be a finite number, "
                                          r"got nan$"):
        load_config("classification", overrides=overrides)
    # finite values still pass, and the checks above did not loosen any range
    cfg = load_config("classification", overrides={"hflip": 0.0, "rrc_scale": [0.5, 1], "color_jitter": 1e30})
    assert (cfg.hflip, cfg.rrc_scale, cfg.color_jitter) == (0.0, [0.5, 1.0], 1e30)


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
model_kwargs: {x: *i}
"""


def test_yaml_aliases_and_anchors_are_refused(tmp_path):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError) as e:
        load_config(None, recipe)
    assert str(e.value) == (f"config file {recipe}, line 1: YAML anchors and aliases (&a) are not allowed in "
                            "splitattn configs; write the value out (recipes share keys through _base_)")
    recipe.write_text("epochs: 3\nmodel_kwargs: {stem_width: *w}\n")  # an alias alone (undefined)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(recipe))}, line 2: YAML anchors and aliases "
                                          r"\(\*w\)"):
        read_yaml_config(recipe)
    with pytest.raises(ConfigError, match=r"^the value of override 'mean', line 1: YAML anchors and aliases "
                                          r"\(&m\) are not allowed"):
        parse_override("mean=[&m 1, *m, 1]")


def test_duplicate_keys_name_the_file_the_key_and_both_lines(tmp_path):
    (tmp_path / "base.yaml").write_text("config_version: 2\nepochs: 5\nbatch_size: 32\n")
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("_base_: base.yaml\nepochs: 3\nlr: 0.1\n\nepochs: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(None, recipe)
    assert str(e.value) == f"config file {recipe}: key 'epochs' is given twice (lines 2 and 5); keep one"
    recipe.write_text("model_kwargs:\n  stem_width: 8\n  stem_width: 16\n")  # nested mappings too
    with pytest.raises(ConfigError, match=r"key 'stem_width' is given twice \(lines 2 and 3\)"):
        load_config(None, recipe)
    # A child overriding its base is not a duplicate
    recipe.write_text("_base_: base.yaml\nepochs: 3\n")
    cfg = load_config(None, recipe)
    assert (cfg.epochs, cfg.batch_size) == (3, 32)


def test_messages_never_quote_a_huge_value_in_full(tmp_path):
    for overrides in ({"epochs": list(range(100_000))}, {"rrc_scale": [0.5] * 100_000},
                      {"amp": "x" * 100_000}, {"task": "y" * 100_000}):
        with pytest.raises(ConfigError) as e:
            load_config(overrides.get("task", "classification"), overrides=overrides)
        assert len(str(e.value)) < 400 and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^override 'z+\.\.\.z+' must look like KEY=VALUE"):
        parse_override("z" * 100_000)
    with pytest.raises(ConfigError) as e:
        load_config("classification", overrides={"k" * 100_000: 1})
    assert str(e.value).startswith("unknown config key 'kkkk") and len(str(e.value)) < 2000


def test_files_that_are_not_recipes(tmp_path):
    deep = tmp_path / "deep.yaml"
    depth = sys.getrecursionlimit()  # at least two frames a level: too deep whatever the limit
    deep.write_text("model_kwargs: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(deep))}: its YAML is nested too "
                                          r"deeply to read$"):
        load_config(None, deep)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml is 1,048,579 bytes, over the 1,048,576-byte limit"):
        load_config(None, big)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlr: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: while parsing a flow sequence") as e:
        load_config(None, bad)
    assert "\n" not in str(e.value)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"fifo.yaml is not a regular file; pass a recipe YAML"):
        load_config(None, fifo)


def test_saved_configs_hold_no_aliases_and_load_back(tmp_path):
    shared = [0.5, 1.0]
    path = save_config({"task": "classification", "rrc_scale": shared, "scale_copy": shared},
                       tmp_path / "c.yaml")
    text = path.read_text()
    assert "&" not in text and "*" not in text
    assert read_yaml_config(path)["scale_copy"] == [0.5, 1.0]
