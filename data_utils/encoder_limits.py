"""Checks that the features a run will make fit the encoder, done at set-up before anything is written.

The tokenizer must be the encoder's own (:func:`check_tokenizer`: without it every word is the unknown token, or
ids miss the embedding table), and two limits of an encoder's embedding tables turn into crashes deep inside a
run (at the first long row, or the first pair batch) unless they are checked up front:

- positions: absolute position embeddings have ``max_position_embeddings`` rows. RoBERTa-style encoders number
  positions from ``padding_idx + 1``, so only ``max_position_embeddings - pad_token_id - 1`` tokens fit.
  DeBERTa(-v2) without ``position_biased_input`` has no absolute positions (relative attention only): no limit.
- token types: a pair task's second sentence gets token type 1 from BERT-style tokenizers; an encoder with
  ``type_vocab_size`` 1 cannot look it up. A tokenizer that gives all-zero types (or none) is fine.
"""
from __future__ import annotations

import logging
from typing import Iterable

from data_utils.task_def import ConfigError, TaskDef

logger = logging.getLogger(__name__)

MIN_SEQ_LEN = 8

# model types whose position ids start after the padding index (HF's create_position_ids_from_input_ids)
PADDING_OFFSET_TYPES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "roberta-prelayernorm",
    "ibert", "luke", "mpnet", "xmod", "esm", "lilt", "markuplm", "layoutlmv3",
})
# model types that add token type embeddings only when type_vocab_size > 0
OPTIONAL_TYPES = frozenset({"deberta", "deberta-v2"})


def position_limit(config) -> tuple[int | None, str]:
    """The most tokens ``config``'s encoder takes, and how that number comes about (None: no limit)."""
    model_type = getattr(config, "model_type", "")
    mpe = getattr(config, "max_position_embeddings", None)
    if model_type in OPTIONAL_TYPES and not getattr(config, "position_biased_input", True):
        return None, "relative positions only"
    if not isinstance(mpe, int) or mpe <= 0:
        return None, "no position table"
    if model_type in PADDING_OFFSET_TYPES:
        pad = getattr(config, "pad_token_id", None)
        pad = 1 if pad is None else int(pad)
        return mpe - pad - 1, (f"max_position_embeddings {mpe} minus {pad + 1}: positions start after "
                               f"padding_idx {pad}")
    return mpe, f"max_position_embeddings {mpe}"


PROBE_TEXT = "the man and the woman saw a small dog in the park on monday ."


def check_tokenizer(tokenizer, config, where: str) -> None:
    """Raise :class:`ConfigError` (one line naming ``where``, the folder or hub name) when ``tokenizer`` cannot be
    the encoder's: it has no vocabulary of its own (a folder without tokenizer files still gives a tokenizer of
    its special tokens alone, which turns every word into the unknown token), or its size does not fit the
    encoder's embedding table (``config.vocab_size`` rows): larger, ids past the table fail; less than half,
    the files belong to another model."""
    size = len(tokenizer)
    unk = tokenizer.unk_token_id
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if size <= len(set(tokenizer.all_special_ids)) or (unk is not None and all(i == unk for i in ids)):
        raise ConfigError(f"{where}: no usable tokenizer files: the tokenizer read from it has {size} entries and "
                          f"makes every word {tokenizer.unk_token!r}; put the encoder's own tokenizer files "
                          f"(tokenizer.json, or vocab.txt, vocab.json + merges.txt, ...) beside its config.json")
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and rows > 0 and (size > rows or 2 * size < rows):
        why = (f"ids from {rows} up have no embedding" if size > rows
               else "the tokenizer files belong to another model")
        raise ConfigError(f"{where}: the tokenizer has {size} entries but the encoder's embedding table has "
                          f"vocab_size {rows} rows ({why}); use the encoder's own tokenizer files")


def _largest_token_type(tokenizer, pair: bool) -> int:
    """The largest token type id the tokenizer gives a (single or pair) input."""
    enc = tokenizer("a", "b", return_token_type_ids=True) if pair else tokenizer("a", return_token_type_ids=True)
    return max(enc["token_type_ids"], default=0)


def check_encoder_fits(config, tokenizer, tasks: Iterable[TaskDef], max_seq_len: int, name: str | None = None,
                       flag: str = "--max_seq_len") -> None:
    """Raise :class:`ConfigError` (one line) when ``max_seq_len`` or the tasks' token types exceed the encoder.

    ``config`` is the encoder's HF config, ``tokenizer`` its fast tokenizer, ``tasks`` those to be tokenized.
    """
    name = name or getattr(config, "_name_or_path", "") or getattr(config, "model_type", "encoder")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < MIN_SEQ_LEN:
        raise ConfigError(f"{flag} must be an integer >= {MIN_SEQ_LEN}, got {max_seq_len!r}")
    limit, why = position_limit(config)
    if limit is not None and max_seq_len > limit:
        raise ConfigError(f"{flag} {max_seq_len} is more than encoder {name} can take: {limit} tokens ({why}); "
                          f"use {flag} {limit} or less")
    tasks = list(tasks)
    if "token_type_ids" not in tokenizer.model_input_names or not tasks:
        return  # no token types are fed to the encoder
    type_vocab = getattr(config, "type_vocab_size", None)
    if not isinstance(type_vocab, int):
        return  # the encoder has no token type table (DistilBERT): it takes no token types
    if type_vocab == 0 and getattr(config, "model_type", "") in OPTIONAL_TYPES:
        return  # DeBERTa without a token type table ignores them
    pair_tasks = [t.name for t in tasks if t.input == "pair"]
    largest = _largest_token_type(tokenizer, pair=bool(pair_tasks))
    if largest >= type_vocab:
        which = f"pair task(s) {', '.join(pair_tasks)}" if pair_tasks else "single-sentence inputs"
        raise ConfigError(f"encoder {name} has type_vocab_size {type_vocab}, but its tokenizer gives token type "
                          f"{largest} to {which}; use a tokenizer without token types (or with all-zero ones) "
                          f"or an encoder with {largest + 1} token types")
