"""fairseq-skd: self-knowledge distillation (Hahn & Choi, 2019) as a fairseq user dir.

``--user-dir fairseq_skd`` imports this package; fairseq auto-imports only ``tasks/`` and
``models/``, so the criterions are imported here explicitly. Without fairseq installed the
package still imports, for ``fairseq_skd.losses`` (torch alone) and ``fairseq_skd.hf``
(Hugging Face transformers); there is then nothing to register.
"""

import importlib.util

if importlib.util.find_spec("fairseq") is not None:
    from . import checkpoint_loading, criterions, models  # noqa: F401

    checkpoint_loading.allow_fairseq_checkpoint_globals()
