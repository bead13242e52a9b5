"""What a trained experiment produced and how it is reported, for every tool that reads it.

- :mod:`.layout`: the experiment folder (a folder per variant with ``train.log`` and score
  files), the variants and their display names, the tasks and experiments;
- :mod:`.paper`: Hahn & Choi (2019)'s Table 2 and Table 3;
- :mod:`.logs`: fairseq's JSON training log: records, series, a training summary, one line per
  epoch as the log streams;
- :mod:`.tables`: markdown tables and CSV files;
- :mod:`.diagnostics`: the prediction diagnostics table's columns and legend, and seeds'
  reliability tables pooled;
- :mod:`.figures`: the paper's Figs. 3 and 4, the validation curves and the reliability diagram
  (matplotlib, imported only there).

``fairseq-skd-demo`` (the offline study), ``fairseq-skd-collect`` (one experiment folder) and,
through the collector, the recipes use them. Nothing here imports torch or fairseq.
"""
