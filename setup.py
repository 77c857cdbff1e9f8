"""PanoVLM: HuggingFace-native vision-language models for 360-degree equirectangular panoramas."""

from pathlib import Path

from setuptools import find_packages, setup


# Caption metrics: pycocoevalcap's BLEU, ROUGE-L and CIDEr-D scorers, its PTB tokenizer and METEOR 1.5 jars (they
# need Java; the pure-Python PTB tokenizer is an explicit opt-in); nltk and rouge-score compute the
# PanoLLaVA-compatible "panollava" metrics style.
METRICS_REQUIRES = ["pycocoevalcap>=1.2", "nltk>=3.9", "rouge-score>=0.1.2"]


setup(
    name="panovlm",
    version="0.1.0",
    description="HuggingFace-native vision-language models for 360° equirectangular panoramas",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # The three packages with their sub-packages (training, evaluation, hub, data, ...), and the model card template.
    packages=find_packages(include=["configuration_panovlm*", "modeling_panovlm*", "processing_panovlm*"]),
    package_data={"modeling_panovlm.hub": ["templates/*.md"]},
    install_requires=[
        # torch stays satisfiable by the CPU 2.13.0 wheel; torchvision is deliberately absent (its wheels need
        # CUDA torch), so image processing runs on transformers' PIL backend and our own torch sampler.
        "torch>=2.6",
        "transformers>=5.25,<6",  # 5.25: `cache` replaces `past_key_values`, multimodal output classes
        "accelerate>=1.10",
        "peft>=0.21",
        "safetensors>=0.8",
        "datasets>=4.7",
        "huggingface-hub>=1.31,<3",
        "py360convert>=1.0.3",
        "numpy",
        "pillow",
        "pyyaml",
    ],
    # One `panovlm` command with sub-commands, and each sub-command as its own script (modeling_panovlm/cli).
    entry_points={
        "console_scripts": [
            "panovlm = modeling_panovlm.cli:main",
            "panovlm-train = modeling_panovlm.cli.train:main",
            "panovlm-evaluate = modeling_panovlm.cli.evaluate:main",
            "panovlm-infer = modeling_panovlm.cli.infer:main",
            "panovlm-convert = modeling_panovlm.cli.convert:main",
            "panovlm-migrate-config = modeling_panovlm.cli.migrate_config:main",
            "panovlm-export = modeling_panovlm.cli.export:main",
            "panovlm-demo = modeling_panovlm.cli.demo:main",
            "panovlm-probe = modeling_panovlm.cli.probe:main",
        ]
    },
    extras_require={
        # CUDA machines only: neither builds nor imports without CUDA. Install with --no-build-isolation.
        "mamba": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "metrics": METRICS_REQUIRES,
        # Tests: pytest; parameterized for transformers' common test mixins (tests/transformers_common); trl and
        # transformers' serving extra for the ecosystem tests (TRL's SFTTrainer, `transformers serve`).
        "dev": ["pytest>=8", "parameterized", "trl>=1.16", "transformers[serving]", *METRICS_REQUIRES],
        # Baselines of benchmarks/ (see benchmarks/README.md). Install into a separate venv: OpenCV switches
        # py360convert's backend, which would change what the test suite compares against.
        "bench": ["pyequilib>=0.6", "opencv-python-headless", "mambapy>=1.2"],
    },
)
