from . import kd_cross_entropy, rdrop_cross_entropy, self_kd_cross_entropy  # noqa: F401
