"""A criterion config's allowed values live with its fields (criterions/config_fields.py): the
argparse flags, their --help, the checks of a built config and the list of flags all come
from the dataclass, here self_kd_cross_entropy's."""

import argparse
from dataclasses import dataclass, field

import pytest
from fairseq import criterions
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II, OmegaConf

import fairseq_skd  # noqa: F401  (registers the criterion)
from fairseq_skd.criterions.config_fields import (Choices, FlagInfo, Range, describe_flags, flag,
                                                  undeclared_flags)
from fairseq_skd.criterions.self_kd_cross_entropy import (SelfKDCrossEntropyConfig,
                                                          SelfKDCrossEntropyCriterion)

from helpers import make_criterion, make_task

FLAGS = describe_flags(SelfKDCrossEntropyConfig)


def skd_parser():
    parser = argparse.ArgumentParser(prog="fairseq-train")
    SelfKDCrossEntropyCriterion.add_args(parser)
    return parser


def usage_error(argv, capsys):
    """fairseq-train's parse of the criterion's flags: exit status and the error line."""
    with pytest.raises(SystemExit) as exit:
        skd_parser().parse_args(argv)
    return exit.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_range_text_and_what_it_allows():
    unit = Range(0, 1, lo_open=True)
    assert str(unit) == "(0, 1]" and str(Range(1)) == "[1, inf)"
    assert str(Range(0, 1, hi_open=True)) == "[0, 1)"
    assert [unit.problem(x) for x in (1, 0.5, 1e-9)] == [None] * 3
    assert unit.problem(0) == "must be in (0, 1], got 0"
    assert unit.problem(1.5) == "must be in (0, 1], got 1.5"
    assert unit.problem(float("nan")) == "must be in (0, 1], got nan"
    assert unit.problem(True) == "must be in (0, 1], got True"
    assert unit.problem("0.5") == "must be in (0, 1], got '0.5'"  # text only where words are
    sigma = Range(0, lo_open=True, words=("auto",))
    assert str(sigma) == "(0, inf) or 'auto'"
    assert [sigma.problem(x) for x in (" Auto", "0.3", 3)] == [None] * 3
    assert sigma.parse(" Auto") == "auto" and sigma.parse("0.3") == 0.3
    assert sigma.problem("-1") == "must be 'auto' or a number in (0, inf), got '-1'"
    assert Choices(("l2", "dot")).problem("cos") == "must be one of ('l2', 'dot'), got 'cos'"


def test_help_ends_with_the_default_and_the_allowed_range():
    text = " ".join(skd_parser().format_help().split())  # argparse wraps lines
    assert ("--skd-qn-max SKD_QN_MAX clip of q_n (Eq. 8: the prediction is never more right than "
            "the target); with topk/full, the clip of the total non-target mass (default: 0.5; range (0, 1])"
            in text)
    assert "distances (watch skd_clip) (default: 0.1; range (0, inf) or 'auto') --skd-sigma-refresh" in text
    assert "--label-smoothing LABEL_SMOOTHING epsilon of label" in text
    assert "on every other word (default: 0.0; range [0, 1)) --target-embed-noise" in text
    assert "--skd-soft-targets {predicted,topk,full} predicted: the paper's" in text


def test_describe_flags_lists_flag_default_allowed_and_help():
    by_flag = {info.flag: info for info in FLAGS}
    assert by_flag["--skd-qn-max"] == FlagInfo(
        "--skd-qn-max", 0.5, Range(0, 1, lo_open=True),
        "clip of q_n (Eq. 8: the prediction is never more right than the target); with "
        "topk/full, the clip of the total non-target mass")
    assert by_flag["--skd-sigma"].default == "0.1"
    assert str(by_flag["--skd-sigma"].allowed) == "(0, inf) or 'auto'"
    assert by_flag["--skd-distance"][1:3] == ("l2", Choices(("l2", "cosine", "dot")))
    assert str(by_flag["--skd-soft-targets"].allowed) == "{predicted, topk, full}"
    assert "--sentence-avg" not in by_flag  # optimization's --sentence-avg, mirrored


def test_the_kd_criterions_fields_are_declared_and_its_paths_checked(tmp_path):
    from fairseq_skd.criterions.config_fields import Paths
    from fairseq_skd.criterions.kd_cross_entropy import KDCrossEntropyConfig

    assert undeclared_flags(KDCrossEntropyConfig) == []
    kd = {info.flag: info for info in describe_flags(KDCrossEntropyConfig)}
    assert set(kd) == {info.flag for info in FLAGS} | {
        "--kd-teacher", "--kd-teacher-cache", "--kd-alpha", "--kd-temperature", "--kd-topk"}
    assert kd["--skd-alpha-max"].default == 0.0  # SKD off unless asked for
    (tmp_path / "a.pt").write_text("")
    several = Paths("file", ":")
    assert several.problem(f"{tmp_path}/a.pt:{tmp_path}/a.pt") is None and several.problem("") is None
    assert several.problem(f"{tmp_path}/a.pt:{tmp_path}/b.pt") == (
        f"must name an existing file: '{tmp_path}/b.pt' is not one")
    assert Paths("folder", None).problem(str(tmp_path / "a.pt")) == (
        f"must name an existing folder: '{tmp_path}/a.pt' is not one")


def test_every_field_is_a_flag_with_help_and_allowed_values():
    assert undeclared_flags(SelfKDCrossEntropyConfig) == []
    fields = set(SelfKDCrossEntropyConfig.__dataclass_fields__) - {"_name", "sentence_avg"}
    assert [info.flag for info in FLAGS] == [f"--{name.replace('_', '-')}" for name in
                                             SelfKDCrossEntropyConfig.__dataclass_fields__
                                             if name in fields]
    parsed = {a.option_strings[0] for a in skd_parser()._actions} - {"-h"}
    assert parsed == {info.flag for info in FLAGS}


def test_undeclared_flags_names_what_a_field_lacks():
    @dataclass
    class Partly(FairseqDataclass):
        fine: float = flag(0.5, "a ratio", Range(0, 1))
        mode: ChoiceEnum(["a", "b"]) = flag("a", "a mode")
        on: bool = flag(False, "a switch")
        no_range: float = flag(1.0, "a scale")
        nothing: int = field(default=3)
        mirrored: bool = II("optimization.sentence_avg")

    assert undeclared_flags(Partly) == ["--no-range: no allowed range or choices",
                                        "--nothing: no help and no allowed range or choices"]


def out_of_range(allowed):
    """The value just outside a Range's lower end."""
    return allowed.lo if allowed.lo_open else allowed.lo - 1


@pytest.mark.parametrize("info", [i for i in FLAGS if isinstance(i.allowed, Range)],
                         ids=lambda i: i.flag)
def test_every_range_is_checked_at_parsing_and_when_built(info, capsys):
    bad = type(info.default)(out_of_range(info.allowed))  # --skd-sigma's number is text
    assert info.allowed.problem(bad).startswith("must be ")
    assert usage_error([info.flag, str(bad)], capsys) == (
        2, f"fairseq-train: error: argument {info.flag}: {info.allowed.problem(bad)}")
    with pytest.raises(ValueError, match=f"^self_kd_cross_entropy: {info.flag} must be "):
        make_criterion(**{info.flag[2:].replace("-", "_"): bad})
    lowest = info.allowed.lo if not info.allowed.lo_open else info.allowed.hi or info.allowed.lo + 1
    assert skd_parser().parse_args([info.flag, str(lowest)]) is not None
    make_criterion(**{info.flag[2:].replace("-", "_"): type(info.default)(lowest)})


@pytest.mark.parametrize("info", [i for i in FLAGS if isinstance(i.allowed, Choices)],
                         ids=lambda i: i.flag)
def test_every_choice_is_checked_at_parsing_and_when_built(info, capsys):
    code, error = usage_error([info.flag, "other"], capsys)
    assert code == 2 and error.startswith(f"fairseq-train: error: argument {info.flag}: invalid "
                                          f"choice: 'other'")
    with pytest.raises(ValueError, match=f"^self_kd_cross_entropy: {info.flag} must be one of"):
        make_criterion(**{info.flag[2:].replace("-", "_"): "other"})


def test_bad_values_are_refused_with_the_number_in_the_message(capsys):
    assert usage_error(["--skd-qn-max", "1.5"], capsys) == (
        2, "fairseq-train: error: argument --skd-qn-max: must be in (0, 1], got 1.5")
    assert usage_error(["--skd-sigma", "fast"], capsys)[1].endswith(
        "argument --skd-sigma: must be 'auto' or a number in (0, inf), got 'fast'")
    with pytest.raises(ValueError, match=r"--skd-topk must be an integer in \[1, inf\), got 2.5"):
        make_criterion(skd_topk=2.5)
    with pytest.raises(ValueError, match="sentence_avg is '\\${optimization.sentence_avg}'"):
        SelfKDCrossEntropyCriterion(SelfKDCrossEntropyConfig(), make_task())


def test_fairseq_builds_the_criterion_from_its_config():
    """fairseq's registry builds it from a DictConfig (fairseq-train's and fairseq-hydra-train's
    route), passing the config as ``cfg``; a bad value is refused there too."""
    def build(**fields):
        return criterions.build_criterion(OmegaConf.create(
            {"_name": "self_kd_cross_entropy", "sentence_avg": False, **fields}), make_task())

    criterion = build(skd_qn_max=0.3, skd_sigma="auto", skd_soft_targets="topk")
    assert (criterion.qn_max, criterion.auto_sigma, criterion.soft_targets) == (0.3, True, "topk")
    assert (criterion.topk, criterion.warmup_updates) == (10, 500)  # the defaults
    with pytest.raises(ValueError, match=r"^self_kd_cross_entropy: --skd-qn-max must be in "
                                         r"\(0, 1\], got 1.5$"):
        build(skd_qn_max=1.5)
