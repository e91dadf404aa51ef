from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml

from distilkit.adapt import AdaptConfig
from distilkit.config import (
    ConfigError,
    config_keys,
    dump_config,
    field_docs,
    load_config,
    to_dict,
    type_label,
    yaml_value,
)
from distilkit.data import PrepareConfig
from distilkit.distill import DistillConfig, LossConfig
from distilkit.errors import DistilkitError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Every shipped config and the schema it must satisfy. A new file in configs/ fails
# test_every_shipped_config_is_covered until it is added here (or to another stage's test).
SCHEMAS = {
    "distilbert-base-uncased.yaml": DistillConfig,
    "prepare-wikipedia-en.yaml": PrepareConfig,
    "quickstart-cpu-prepare.yaml": PrepareConfig,
    "quickstart-cpu-adapt.yaml": AdaptConfig,
    "quickstart-cpu.yaml": DistillConfig,
}
TESTED_ELSEWHERE = {
    "finetune.yaml",  # test_finetune.py
    "bench_paper.yaml",  # test_bench.py
    "ablation.yaml",  # test_ablate.py
}


def test_every_shipped_config_is_covered():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert shipped == set(SCHEMAS) | (TESTED_ELSEWHERE & shipped)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_shipped_config_loads(name):
    cfg = load_config(SCHEMAS[name], CONFIGS / name)
    assert isinstance(cfg, SCHEMAS[name])


def test_paper_recipe_values():
    cfg = load_config(DistillConfig, CONFIGS / "distilbert-base-uncased.yaml")
    assert cfg.teacher == "bert-base-uncased"
    assert cfg.student_layers == [0, 2, 4, 7, 9, 11]
    assert (cfg.loss.alpha_ce, cfg.loss.alpha_mlm, cfg.loss.alpha_cos) == (5.0, 2.0, 1.0)
    assert cfg.loss.temperature == 2.0 and cfg.train.optim.lr == 5e-4
    assert cfg.train.optim.betas == [0.9, 0.98]
    assert cfg.train.batch_size * cfg.train.grad_accumulation * 8 == 4096


def test_unknown_key_and_wrong_type_fail_with_the_dotted_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.batch_sise'"):
        load_config(DistillConfig, bad)
    bad.write_text("loss:\n  temperature: hot\n")
    with pytest.raises(ConfigError, match=r"'loss.temperature': expected a number"):
        load_config(DistillConfig, bad)
    bad.write_text("train:\n  precision: fp8\n")
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(DistillConfig, bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(DistillConfig, bad)


def test_overrides_and_flags_take_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher: a\ntrain:\n  max_steps: 5\n")
    cfg = load_config(
        DistillConfig,
        f,
        ["train.max_steps=7", "loss.alpha_cos=0", "student_layers=[0,2]"],
        flags={"teacher": "b"},
    )
    assert cfg.teacher == "b" and cfg.train.max_steps == 7
    assert cfg.loss.alpha_cos == 0.0 and cfg.student_layers == [0, 2]
    assert cfg.train.batch_size == 8  # untouched default
    cfg = load_config(DistillConfig, None, ["train.optim.lr=3e-5"])  # YAML 1.1 says "3e-5"
    assert cfg.train.optim.lr == 3e-5
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(DistillConfig, None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(DistillConfig, None, ["train.max_steps=1.5"])


def test_semantic_validation():
    with pytest.raises(DistilkitError, match="mlm_probability"):
        load_config(DistillConfig, None, ["masking.mlm_probability=1.5"])
    with pytest.raises(DistilkitError, match="batch_size"):
        load_config(DistillConfig, None, ["train.batch_size=0"])


def test_a_section_built_by_a_factory_keeps_its_values_for_keys_not_given(tmp_path):
    # adapt-teacher's train section has its own optimiser defaults; setting one train key (as
    # --max-steps does) must not swap them for TrainConfig's.
    cfg = load_config(AdaptConfig, None, ["train.max_steps=5"])
    assert cfg.train.max_steps == 5 and cfg.train.optim == AdaptConfig().train.optim
    f = tmp_path / "a.yaml"
    f.write_text("train:\n  optim:\n    lr: 0.001\n")
    cfg = load_config(AdaptConfig, f)
    assert cfg.train.optim.lr == 1e-3 and cfg.train.optim.betas == [0.9, 0.999]


def test_field_docs_types_and_keys_come_from_the_dataclass():
    docs = field_docs(LossConfig)
    assert (
        docs["restrict_ce_to_mask"]
        == "L_ce on masked positions only (True) or on every real token."
    )
    assert type_label(Literal["auto", "fp32"]) == "{auto,fp32}"
    assert type_label(float | None) == "float | None" and type_label(list[int]) == "list[int]"
    keys = [k.key for k in config_keys(DistillConfig)]
    assert keys[0] == "teacher" and "train.optim.lr" in keys and "loss.embedding.spans" in keys
    # Plain keys of a section come before its subsections.
    assert keys.index("train.halt_at_step") < keys.index("train.optim.lr")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_dump_config_loads_back_equal(name, tmp_path):
    cfg = load_config(SCHEMAS[name], CONFIGS / name)
    f = tmp_path / name
    f.write_text(dump_config(cfg, header="a header\nof two lines"))
    assert to_dict(load_config(SCHEMAS[name], f)) == to_dict(cfg)


def test_yaml_values_stay_one_line_and_load_back():
    for value in ["", "yes", "1e-4", "a: b", "two\nlines", "#x", None, True, 3e-5, [0, 2], {}]:
        text = yaml_value(value)
        assert "\n" not in text and yaml.safe_load(f"k: {text}  # note") == {"k": value}
