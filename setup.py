from setuptools import find_packages, setup

setup(
    name="fairseq-skd",
    version="0.1.0",
    description="Self-knowledge distillation (Hahn & Choi, 2019) as a fairseq plugin",
    packages=find_packages(include=["fairseq_skd", "fairseq_skd.*"]),
    python_requires=">=3.10",
    # torch and fairseq(-fixed) are installed by setup_env.sh, which pins them deliberately;
    # declaring them here would let pip replace a CPU or user-built CUDA torch.
    install_requires=[],
    entry_points={
        "console_scripts": [
            "fairseq-skd-demo = fairseq_skd.cli.demo:main",
            "fairseq-skd-score-lm = fairseq_skd.cli.score_lm:main",
            "fairseq-skd-bleu = fairseq_skd.cli.score_bleu:main",
            "fairseq-skd-collect = fairseq_skd.cli.collect_results:main",
            "fairseq-skd-train = fairseq_skd.cli.train:main",
        ],
    },
)
