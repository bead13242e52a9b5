"""The allowed values of self_kd_cross_entropy's flags, checked twice: when fairseq-train parses
its command line (a usage error before any data or model is loaded) and when the criterion is
built (for fairseq-hydra-train's YAML configs and for Python callers)."""

import argparse
import math


def _in_range(lo, hi, lo_open=False, hi_open=False):
    def check(value):
        return (value > lo if lo_open else value >= lo) and (
            hi is None or (value < hi if hi_open else value <= hi)
        )

    text = ("(" if lo_open else "[") + f"{lo}, " + ("inf)" if hi is None else f"{hi}" + (")" if hi_open else "]"))
    return check, text


# flag -> (config field, check, allowed range as text)
FLAG_CHECKS = {
    "--skd-sigma": ("skd_sigma", *_in_range(0, None, lo_open=True)),
    "--skd-sigma-refresh": ("skd_sigma_refresh", *_in_range(1, None)),
    "--skd-topk": ("skd_topk", *_in_range(1, None)),
    "--skd-topk-refresh": ("skd_topk_refresh", *_in_range(1, None)),
    "--label-smoothing": ("label_smoothing", *_in_range(0, 1, hi_open=True)),
    "--skd-warmup-updates": ("skd_warmup_updates", *_in_range(0, None)),
    "--skd-alpha-step": ("skd_alpha_step", *_in_range(0, None)),
    "--skd-alpha-max": ("skd_alpha_max", *_in_range(0, 1)),
    "--skd-lambda": ("skd_lambda", *_in_range(0, 1)),
    "--skd-qn-max": ("skd_qn_max", *_in_range(0, 1, lo_open=True)),
    "--target-embed-noise": ("target_embed_noise", *_in_range(0, None)),
    "--ignore-prefix-size": ("ignore_prefix_size", *_in_range(0, None)),
}


def parse_sigma(value):
    """--skd-sigma: 'auto' or a number (kept as a string in the config for 'auto')."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            return value
    return value


def flag_problem(flag: str, value):
    """What is wrong with ``value`` for ``flag`` ("must be in ..."), or None if it is fine."""
    _, check, allowed = FLAG_CHECKS[flag]
    if flag == "--skd-sigma":
        value = parse_sigma(value)
        if value == "auto":
            return None
        if isinstance(value, str):
            return f"must be 'auto' or a number in {allowed}, got {value!r}"
    if value is None or isinstance(value, bool) or not math.isfinite(value) or not check(value):
        return f"must be in {allowed}, got {value!r}"
    return None


def check_flag(flag: str, value) -> None:
    """Raise ValueError naming ``flag`` if ``value`` is outside its allowed range."""
    problem = flag_problem(flag, value)
    if problem is not None:
        raise ValueError(f"self_kd_cross_entropy: {flag} {problem}")


def check_choice(flag: str, value, choices) -> None:
    if str(value) not in choices:
        raise ValueError(f"self_kd_cross_entropy: {flag} must be one of {choices}, got {value!r}")


def checked_type(flag, convert):
    """An argparse ``type`` that converts with ``convert`` and refuses out-of-range values."""

    def parse(text):
        value = convert(text)
        problem = flag_problem(flag, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


class RangeCheckedArguments:
    """A view of an argparse parser whose ``add_argument`` gives the flags of FLAG_CHECKS a
    range-checking ``type``; everything else goes to the parser unchanged. fairseq builds a
    criterion's flags from its config dataclass through ``parser.add_argument`` alone."""

    def __init__(self, parser):
        self._parser = parser

    def add_argument(self, *names, **kwargs):
        flag = next((name for name in names if name in FLAG_CHECKS), None)
        if flag is not None and kwargs.get("type") in (int, float, str):
            kwargs["type"] = checked_type(flag, kwargs["type"])
        return self._parser.add_argument(*names, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)
