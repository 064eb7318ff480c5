"""Job flags and YAML keys derived from the config dataclasses: every field reachable, nested configs, precedence."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from jobs.common import dataclass_parser, parse_config
from jobs.train import build_parser as train_parser
from jobs.train_entropy import build_parser as entropy_parser
from training.config import CheckpointConfig, EntropyTrainConfig, TrainConfig


def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name


@pytest.mark.parametrize(("cls", "parser"), [(TrainConfig, train_parser), (EntropyTrainConfig, entropy_parser)])
def test_every_field_has_a_flag(cls, parser):
    flags = _flags(parser())
    for name in _leaf_fields(cls):
        assert "--" + name.replace("_", "-") in flags, name
    assert {"--min-lr-ratio", "--grad-clip", "--stop-after", "--checkpoint.keep"} <= flags


def test_flags_yaml_and_defaults_build_the_dataclass(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "dataset: s3://b/ds\noutput: s3://b/run\nmin_lr_ratio: 0.05\ncheckpoint:\n  every: 7\n  keep: 1\n"
        "grad-clip: 0.5\nmodel_overrides: {global_config: {num_hidden_layers: 3}}\nstop_after: 9\n")
    cfg, args = parse_config(train_parser(), TrainConfig, [
        "--config", str(tmp_path / "job.yaml"), "--checkpoint-keep", "4", "--audit-docs", "--no-export-hf",
        "--stop-after", "none", "--no-ray"])
    assert cfg.dataset == "s3://b/ds" and cfg.optim.min_lr_ratio == 0.05 and cfg.optim.grad_clip == 0.5
    assert cfg.checkpoint == CheckpointConfig(every=7, keep=4)  # the flag wins over the YAML key
    assert cfg.audit_docs and not cfg.export_hf and cfg.drills.stop_after is None and args.no_ray
    assert cfg.model_overrides == {"global_config": {"num_hidden_layers": 3}}
    assert cfg.steps == TrainConfig.steps  # untouched fields keep the dataclass default


def test_nested_reader_config_and_required_fields(capsys):
    cfg, _ = parse_config(entropy_parser(), EntropyTrainConfig,
                          ["--inputs", "x/*.jsonl", "--output", "em", "--reader.text-field", "body", "--steps", "5"])
    assert cfg.reader.text_field == "body" and cfg.steps == 5
    with pytest.raises(SystemExit):
        parse_config(entropy_parser(), EntropyTrainConfig, ["--output", "em"])
    assert "--inputs" in capsys.readouterr().err


def test_unknown_yaml_key_is_refused(tmp_path):
    (tmp_path / "job.yaml").write_text("dataset: a\noutput: b\nnot_a_field: 1\n")
    with pytest.raises(SystemExit):
        parse_config(train_parser(), TrainConfig, ["--config", str(tmp_path / "job.yaml")])


@dataclasses.dataclass
class Inner:
    rate: float = 1.0  # how fast


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: list = dataclasses.field(default_factory=list)


def test_any_dataclass_gets_a_parser():
    parser = dataclass_parser(Outer, "x", None)
    cfg, _ = parse_config(parser, Outer, ["--name", "n", "--inner.rate", "2.5", "--tags", '["a", "b"]'])
    assert cfg == Outer("n", Inner(2.5), ["a", "b"])
    assert "how fast" in parser.format_help()  # the field's comment is its help
