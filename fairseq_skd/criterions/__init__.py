from . import self_kd_cross_entropy  # noqa: F401
