"""fairseq-skd: self-knowledge distillation (Hahn & Choi, 2019) as a fairseq user dir.

``--user-dir fairseq_skd`` imports this package; fairseq auto-imports only ``tasks/`` and
``models/``, so the criterions are imported here explicitly.
"""

from . import checkpoint_loading, criterions, models  # noqa: F401

checkpoint_loading.allow_fairseq_checkpoint_globals()
