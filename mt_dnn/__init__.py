"""Multi-task fine-tuning of BERT-style encoders on GLUE, with SMART and RAPT regularizers."""

__version__ = "0.1.0"
