"""fairseq-skd-collect: a recipe experiment's tables (markdown + CSV) and figures.

    fairseq-skd-collect exp/wmt15_en_fi
    # writes exp/wmt15_en_fi/results.md, results.csv, reliability.png (over the seeds) and, in
    # each exp/wmt15_en_fi/seed<N>/, that seed's tables and figures; prints the tables

What is read and written: ``fairseq_skd.results.layout``; one run folder's tables:
``fairseq_skd.results.report``; the tables over seeds: ``fairseq_skd.results.seeds``.
"""

import argparse
import logging
import sys
from pathlib import Path

from fairseq_skd.cli.requirements import require_packages
from fairseq_skd.results import layout, seeds
from fairseq_skd.results.report import CollectError

PAPER_EXPERIMENTS = [*layout.LM_EXPERIMENTS, *layout.MT_EXPERIMENTS]


def build_parser():
    parser = argparse.ArgumentParser(prog="fairseq-skd-collect", description=(
        "Tables (markdown + CSV) and figures of a recipe's experiment folder: mean ± std over "
        "its seed<N> folders, each seed's tables in the format of Hahn & Choi (2019) Tables 2-3 "
        "and Figs. 3-4, the paper's numbers beside ours where the experiment is the paper's."))
    parser.add_argument("exp_dir", metavar="EXP_DIR",
                        help="an experiment folder (seed<N>/<variant>/ inside), or one run "
                        "folder (<variant>/ inside)")
    parser.add_argument("--out", metavar="DIR", help="where the tables over the seeds go "
                        "(default: EXP_DIR; each seed's go into its folder)")
    parser.add_argument("--name", help="the experiment's name in the titles (default: the "
                        "folder's name)")
    parser.add_argument("--task", choices=layout.TASKS,
                        help="lm (Table 2) or mt (Table 3); default: from the name or the paper "
                        "experiment, else from the score files found")
    parser.add_argument("--paper", choices=[*PAPER_EXPERIMENTS, "none"], metavar="EXPERIMENT",
                        help="whose numbers in the paper go beside ours: one of "
                        f"{', '.join(PAPER_EXPERIMENTS)} or none (default: the name, if it is "
                        "one of them, else none)")
    parser.add_argument("--smoke", action="store_true",
                        help="the run was a plumbing check: say so, and judge no variant")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    require_packages("fairseq-skd-collect", [] if args.no_figures else ["matplotlib"])
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font search logs at DEBUG
    exp_dir = Path(args.exp_dir)
    name = args.name or exp_dir.resolve().name
    paper_name = args.paper or (name if name in PAPER_EXPERIMENTS else "none")
    try:
        md = seeds.write(exp_dir, args.out, name, args.task,
                         None if paper_name == "none" else paper_name, args.smoke,
                         not args.no_figures)
    except CollectError as e:
        sys.exit(f"fairseq-skd-collect: error: {e}")
    print(md, end="")
    out = Path(args.out or exp_dir)
    print(f"\nwritten to {out}/: results.md, results.csv"
          + ("" if args.no_figures else " and figures")
          + ("; each seed's tables and figures in its seed<N>/ folder"
             if layout.seed_dirs(exp_dir) else ""), flush=True)


if __name__ == "__main__":
    main()
