"""Multi-task fine-tuning of BERT-style encoders on GLUE, with SMART and RAPT regularizers."""

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str):
    """``mt_dnn.load_run`` is imported on first use, so ``import mt_dnn`` stays light (no torch)."""
    if name == "load_run":
        from mt_dnn.api import load_run

        return load_run
    raise AttributeError(f"module 'mt_dnn' has no attribute {name!r}")
