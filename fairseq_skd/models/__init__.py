"""The paper's architectures. fairseq's ``--user-dir`` auto-imports every module in this folder;
importing them here too makes ``import fairseq_skd`` alone register them."""

import importlib
import os

for _file in sorted(os.listdir(os.path.dirname(__file__))):
    if _file.endswith(".py") and not _file.startswith("_"):
        importlib.import_module(f"{__name__}.{_file[:-3]}")
