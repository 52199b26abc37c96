"""Config values are parsed by the field's declared type, from a YAML file or an override, never by YAML's guess.

The reference is the value itself: every declared type is rendered as the text a user would type, loaded
back, and compared with the Python value it came from.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.utils.config import PathOrHubId, apply_overrides, config_from_dict, load_config, parse_config_value, save_config


@dataclasses.dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    amp: Literal["auto", "bf16", "off"] = "auto"
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"itc": 1.0, "itm": 1.0})


@dataclasses.dataclass
class Every:
    name: str = "run"
    count: int = 0
    ratio: float = 0.5
    flag: bool = True
    limit: Optional[int] = None
    label: Optional[str] = None
    ids: list[int] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=lambda: ["a"])
    pair: tuple[int, int] = (1, 2)
    mode: Literal["swap", "allow", "forbid"] = "swap"
    tokenizer: Literal["wordpiece", "bundled"] | PathOrHubId = "wordpiece"
    inner: Inner = dataclasses.field(default_factory=Inner)


# ------------------------------------------------------------------ YAML 1.1 words are text for str fields


@pytest.mark.parametrize("word", ["off", "no", "yes", "on", "2024", "1e-3", "null", "0x10", "~", "true"])
def test_override_of_a_str_field_keeps_the_text_yaml_would_convert(word: str) -> None:
    assert load_config(Every, None, [f"name={word}"]).name == word


def test_amp_off_override_is_the_string_off() -> None:
    assert load_config(Every, None, ["inner.amp=off"]).inner.amp == "off"


def test_yaml_file_values_are_parsed_by_declared_type(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("name: 2024\nflag: off\nratio: 1e-3\ninner:\n  amp: off\n  steps: 0x10\nlimit: null\nlabel: no\n")
    cfg = load_config(Every, f)
    assert (cfg.name, cfg.flag, cfg.ratio, cfg.inner.amp, cfg.inner.steps, cfg.limit, cfg.label) == (
        "2024", False, 1e-3, "off", 16, None, "no")


def test_yaml_file_with_a_bom_and_crlf_loads(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes("\ufeffname: x\r\ncount: 3\r\n".encode("utf-8"))
    assert load_config(Every, f).count == 3


# ------------------------------------------------------------------ wrong values name the key and the valid ones


@pytest.mark.parametrize(
    "override, match",
    [
        ("inner.amp=fp16", r"'inner.amp' must be one of auto, bf16, off; got 'fp16'"),
        ("mode=flop", r"'mode' must be one of swap, allow, forbid"),
        ("count=1.5", r"'count' expects int, got '1.5'"),
        ("flag=maybe", r"'flag' expects bool"),
        ("ratio=abc", r"'ratio' expects float"),
        ("limit=ten", r"'limit' must be int or null"),
        ("ids=[1, x]", r"'ids\[1\]' expects int"),
        ("pair=[1]", r"'pair' expects 2 items"),
        ("inner.weights.itm=abc", r"'inner.weights.itm' expects float, got 'abc'"),
        ("inner.weights={itm: abc}", r"'inner.weights.itm' expects float"),
        ("inner=3", r"'inner' expects a mapping of Inner fields"),
        ("tokenizer=bundeld", r"'tokenizer' must be one of wordpiece, bundled or an existing file or folder"),
        ("nope=1", r"unknown config key 'nope'"),
        ("inner.nope=1", r"unknown config key 'inner.nope'"),
    ],
)
def test_bad_override_fails_at_load_naming_key_and_valid_values(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(Every, None, [override])


def test_dict_values_from_python_are_type_checked() -> None:
    with pytest.raises(ValueError, match="'inner.weights.itm' expects float, got"):
        config_from_dict(Every, {"inner": {"weights": {"itm": [1]}}})


def test_tokenizer_accepts_a_known_name_an_existing_folder_or_a_hub_id(tmp_path: Path) -> None:
    assert load_config(Every, None, ["tokenizer=bundled"]).tokenizer == "bundled"
    assert load_config(Every, None, [f"tokenizer={tmp_path}"]).tokenizer == str(tmp_path)
    assert load_config(Every, None, ["tokenizer=microsoft/BiomedVLP-CXR-BERT"]).tokenizer == "microsoft/BiomedVLP-CXR-BERT"
    with pytest.raises(ValueError, match="must be one of wordpiece, bundled"):
        load_config(Every, None, [f"tokenizer={tmp_path / 'missing'}"])


def test_section_override_merges_with_the_yaml_files_values(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  lr: 0.25\n  steps: 7\n")
    cfg = load_config(Every, f, ["inner={steps: 9}"])
    assert (cfg.inner.lr, cfg.inner.steps, cfg.inner.amp) == (0.25, 9, "auto")


def test_dict_field_is_a_value_replaced_whole_by_file_and_override(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  weights: {itm: 2}\n")
    assert load_config(Every, f).inner.weights == {"itm": 2.0}
    assert load_config(Every, f, ["inner.weights={mlm: 0}"]).inner.weights == {"mlm": 0.0}
    assert load_config(Every, f, ["inner.weights.itm=3"]).inner.weights == {"itm": 3.0}


def test_apply_overrides_keeps_text_until_the_type_is_known() -> None:
    data = apply_overrides({"a": {"b": 1}}, ["a.b=off"])
    assert data == {"a": {"b": "off"}}
    with pytest.raises(ValueError, match="unknown config key 'a.c'"):
        apply_overrides({"a": {"b": 1}}, ["a.c=1"])


def test_save_then_load_round_trips_values_yaml_would_misread(tmp_path: Path) -> None:
    cfg = Every(name="off", label="2024", tags=["yes", "null", "1e-3"], inner=Inner(amp="off", weights={"on": 2.0}))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Every, tmp_path / "c.yaml") == cfg


# ------------------------------------------------------------------ every declared type, given as a string

_BOOL_WORDS = {True: ["true", "True", "yes", "ON", "1", "y"], False: ["false", "No", "off", "OFF", "0", "n"]}
text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


@settings(max_examples=40, deadline=None)
@given(
    name=text,
    count=st.integers(-(2**40), 2**40),
    ratio=st.one_of(st.floats(allow_nan=False), st.just(math.inf)),
    flag=st.booleans(),
    word=st.integers(0, 5),
    limit=st.one_of(st.none(), st.integers(-1000, 1000)),
    label=st.one_of(st.none(), text.filter(lambda s: s.strip() not in ("null", "Null", "NULL", "~", "none", "None"))),
    ids=st.lists(st.integers(-50, 50), max_size=5),
    tags=st.lists(text, max_size=4),
    pair=st.tuples(st.integers(-9, 9), st.integers(-9, 9)),
    mode=st.sampled_from(["swap", "allow", "forbid"]),
    amp=st.sampled_from(["auto", "bf16", "off"]),
    weights=st.dictionaries(st.sampled_from(["itc", "itm", "mlm", "on", "no"]), st.floats(-1e9, 1e9), max_size=3),
)
def test_every_declared_type_given_as_override_text_round_trips(
    name, count, ratio, flag, word, limit, label, ids, tags, pair, mode, amp, weights
) -> None:
    overrides = [
        f"name={name}",
        f"count={count}",
        f"ratio={ratio!r}",
        f"flag={_BOOL_WORDS[flag][word]}",
        f"limit={'null' if limit is None else limit}",
        f"ids={_flow(ids)}",
        f"tags={_flow(tags)}",
        f"pair={_flow(list(pair))}",
        f"mode={mode}",
        f"inner.amp={amp}",
        f"inner.weights={_flow(weights)}" if weights else "inner.weights={}",
    ]
    if label is not None:
        overrides.append(f"label={label}")
    cfg = load_config(Every, None, overrides)
    assert cfg.name == name and cfg.count == count and cfg.flag is flag and cfg.limit == limit
    assert cfg.ratio == ratio and isinstance(cfg.ratio, float)
    assert cfg.label == label and cfg.ids == ids and cfg.tags == tags and cfg.pair == pair
    assert cfg.mode == mode and cfg.inner.amp == amp
    assert cfg.inner.weights == {k: float(v) for k, v in weights.items()}


@settings(max_examples=30, deadline=None)
@given(name=text, tags=st.lists(text, max_size=4), count=st.integers(-(2**40), 2**40), ratio=st.floats(allow_nan=False))
def test_every_value_round_trips_through_save_and_load(tmp_path_factory, name, tags, count, ratio) -> None:
    cfg = Every(name=name, tags=tags, count=count, ratio=ratio, label=name or None)
    f = tmp_path_factory.mktemp("cfg") / "c.yaml"
    save_config(cfg, f)
    assert load_config(Every, f) == cfg


@settings(max_examples=30, deadline=None)
@given(value=st.text(max_size=12))
def test_text_for_a_number_either_parses_exactly_or_names_the_key(value: str) -> None:
    for tp, conv in ((int, int), (float, float)):
        try:
            got = parse_config_value(value, tp, "k")
        except ValueError as err:
            assert "'k'" in str(err)
            continue
        assert isinstance(got, tp) and not isinstance(got, bool)
        try:
            ref = conv(value.strip())
        except ValueError:
            continue  # YAML spellings (.inf) and int(x, 0) forms (0x1f): accepted deliberately
        assert got == ref or (isinstance(ref, float) and math.isnan(ref) and math.isnan(got))


# ------------------------------------------------------------------ the recipe's enumerated options fail at load


@pytest.fixture(scope="module")
def recipe():
    import unimlip_kit.train

    return unimlip_kit.train  # the recipe's config classes (RecipeConfig, TrainConfig, ...)


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.amp=fp16", "'train.amp' must be one of auto, bf16, off; got 'fp16'"),
        ("device=gpu", "'device' must be one of auto, cpu, cuda; got 'gpu'"),
        ("augment.strength=hard", "'augment.strength' must be one of light, medium, strong"),
        ("augment.flip=mirror", "'augment.flip' must be one of swap, allow, forbid"),
        ("loss.image_ssl=byol", "'loss.image_ssl' must be one of ntxent, simsiam"),
        ("loss.weights.itm=abc", "'loss.weights.itm' expects float, got 'abc'"),
        ("loss.weights={foo: 1}", "'loss.weights' has the key 'foo'; keys must be one of itc, itc_feature"),
        ("data.train_split=val", "'data.train_split' must be one of train, validation, test"),
        ("tokenizer=bundeld", "'tokenizer' must be one of wordpiece, bundled or an existing file or folder, or a hub id"),
        ("model.image_pool=max", "'model.image_pool' must be one of attn, mean, cls"),
        ("model.attention_backend=flash", "'model.attention_backend' must be one of sdpa, xformers or null"),
    ],
)
def test_recipe_rejects_an_unknown_option_when_the_config_loads(recipe, override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(recipe.RecipeConfig, None, [override])


def test_recipe_accepts_every_listed_option_and_yaml_words(recipe, tmp_path: Path) -> None:
    cfg = load_config(recipe.RecipeConfig, None, [
        "train.amp=off", "output_dir=2024", "device=cpu", "augment.strength=strong", "tokenizer=bundled",
        "loss.weights.itm=0.5", "train={max_steps: 7}"])
    assert (cfg.train.amp, cfg.output_dir, cfg.device, cfg.augment.strength, cfg.tokenizer) == (
        "off", "2024", "cpu", "strong", "bundled")
    assert cfg.loss.weights["itm"] == 0.5 and cfg.train.max_steps == 7 and cfg.train.lr == recipe.TrainConfig().lr
    assert load_config(recipe.RecipeConfig, None, [f"tokenizer={tmp_path}"]).tokenizer == str(tmp_path)
    assert load_config(recipe.RecipeConfig, None, ["tokenizer=org/model"]).tokenizer == "org/model"
    assert load_config(recipe.RecipeConfig, None, ["model.attention_backend=null"]).model.attention_backend is None
    assert load_config(recipe.RecipeConfig, None, ["model.attention_backend=sdpa"]).model.attention_backend == "sdpa"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(recipe.RecipeConfig, tmp_path / "c.yaml") == cfg
