"""--max_seq_len and token types are checked against the encoder at set-up, before anything is written."""
from __future__ import annotations

import pytest

from data_utils.encoder_limits import check_encoder_fits, position_limit
from data_utils.task_def import ConfigError
from mt_dnn.cli_utils import run_cli
from mt_dnn.train import main as train_main
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def bert_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def zero_types_tok(tok_dir):
    """The same tokenizer with a pair template that gives both sentences token type 0."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:0 [SEP]:0",
        special_tokens=[("[CLS]", tok.cls_token_id), ("[SEP]", tok.sep_token_id)])
    assert set(tok("a", "b")["token_type_ids"]) == {0}
    return tok


@pytest.mark.parametrize("arch,limit", [("bert", 64), ("electra", 64), ("distilbert", 64), ("deberta-v2", 64),
                                        ("roberta", 62)])
def test_position_limits(arch, limit):
    assert position_limit(tiny_config(arch))[0] == limit


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_the_limit_is_the_encoders_own(arch):
    """The encoder runs a row of exactly ``limit`` tokens and fails on one more."""
    import torch
    from transformers import AutoModel

    cfg = tiny_config(arch)
    limit = position_limit(cfg)[0]
    encoder = AutoModel.from_config(cfg).eval()
    with torch.no_grad():
        encoder(input_ids=torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError)):
            encoder(input_ids=torch.full((1, limit + 1), 5))


def test_roberta_limit_follows_its_padding_index():
    from transformers import RobertaConfig

    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1))[0] == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=0))[0] == 513


def test_deberta_with_relative_positions_only_has_no_limit(tasks, bert_tok):
    cfg = tiny_config("deberta-v2")
    cfg.position_biased_input = False
    assert position_limit(cfg)[0] is None
    check_encoder_fits(cfg, bert_tok, [tasks["rte"]], 100_000)


@pytest.mark.parametrize("arch,ok,too_long", [("bert", 64, 65), ("roberta", 62, 63), ("deberta-v2", 64, 65)])
def test_max_seq_len_against_the_position_table(tasks, bert_tok, arch, ok, too_long):
    cfg = tiny_config(arch)
    cfg.type_vocab_size = 2
    check_encoder_fits(cfg, bert_tok, [tasks["sst"]], ok)
    with pytest.raises(ConfigError) as err:
        check_encoder_fits(cfg, bert_tok, [tasks["sst"]], too_long, name="enc")
    assert str(err.value).startswith(f"--max_seq_len {too_long} is more than encoder enc can take: {ok} tokens")


def test_pair_task_on_an_encoder_with_one_token_type(tasks, bert_tok, zero_types_tok):
    cfg = tiny_config("roberta")
    assert cfg.type_vocab_size == 1
    check_encoder_fits(cfg, bert_tok, [tasks["sst"], tasks["cola"]], 32)  # single sentences: type 0 only
    with pytest.raises(ConfigError) as err:
        check_encoder_fits(cfg, bert_tok, [tasks["sst"], tasks["rte"]], 32, name="enc")
    assert str(err.value).startswith("encoder enc has type_vocab_size 1, but its tokenizer gives token type 1 "
                                     "to pair task(s) rte")
    check_encoder_fits(cfg, zero_types_tok, [tasks["rte"]], 32)  # all-zero token types fit
    no_types = type(bert_tok).from_pretrained(bert_tok.name_or_path, model_input_names=["input_ids", "attention_mask"])
    check_encoder_fits(cfg, no_types, [tasks["rte"]], 32)  # no token types at all


@pytest.mark.parametrize("arch", ["distilbert", "deberta-v2"])
def test_encoders_without_a_token_type_table_take_any_tokenizer(tasks, bert_tok, arch):
    """The check lets a pair task with token type 1 through, and rightly: the model's logits on a pair batch are
    the same with the tokenizer's types (0 then 1) as with all-zero types (DistilBERT's forward takes no token
    types; DeBERTa-v2 with type_vocab_size 0 adds none). A BERT with one token type is refused the same input."""
    import torch

    from tests.conftest import tiny_model

    cfg = tiny_config(arch)
    assert getattr(cfg, "type_vocab_size", 0) == 0
    check_encoder_fits(cfg, bert_tok, [tasks["rte"]], 32)
    enc = bert_tok(["the man sees a dog ."], ["a dog ."], return_tensors="pt")
    assert enc["token_type_ids"].max() == 1
    model = tiny_model(arch=arch).eval()
    batch = {"task": "rte", "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        typed = model({**batch, "token_type_ids": enc["token_type_ids"]})
        zeros = model({**batch, "token_type_ids": torch.zeros_like(enc["token_type_ids"])})
    assert torch.equal(typed, zeros)
    one_type = tiny_config("bert")
    one_type.type_vocab_size = 1
    with pytest.raises(ConfigError, match="type_vocab_size 1, but its tokenizer gives token type 1"):
        check_encoder_fits(one_type, bert_tok, [tasks["rte"]], 32)


def test_too_short_max_seq_len(tasks, bert_tok):
    with pytest.raises(ConfigError, match="--max_seq_len must be an integer >= 8, got 4"):
        check_encoder_fits(tiny_config("bert"), bert_tok, [tasks["sst"]], 4)


# ---- the train CLI checks at set-up ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, bert_tok):
    """A saved tiny RoBERTa (type_vocab_size 1, 62 usable positions) with the fixture's BERT tokenizer."""
    from transformers import RobertaModel

    d = tmp_path_factory.mktemp("roberta")
    RobertaModel(tiny_config("roberta")).save_pretrained(d)
    bert_tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("model,tasks_flag,max_len,message", [
    ("bert", "sst", "129", "--max_seq_len 129 is more than encoder {model} can take: 128 tokens "
                           "(max_position_embeddings 128)"),
    ("roberta", "sst", "63", "--max_seq_len 63 is more than encoder {model} can take: 62 tokens "
                             "(max_position_embeddings 64 minus 2"),
    ("roberta", "rte", "62", "encoder {model} has type_vocab_size 1, but its tokenizer gives token type 1 to "
                             "pair task(s) rte"),
])
def test_train_refuses_at_set_up_and_writes_nothing(tmp_path, glue_dir, tiny_model_dir, roberta_dir, capsys,
                                                    model, tasks_flag, max_len, message):
    model_dir = tiny_model_dir if model == "bert" else roberta_dir
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["--tasks", tasks_flag, "--glue_dir", str(glue_dir), "--model", str(model_dir), "--output_dir", str(out),
            "--cache_dir", str(cache), "--max_seq_len", max_len, "--max_steps", "1"]
    assert run_cli(train_main, argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: " + message.format(model=model_dir))
    assert not out.exists() and not cache.exists()


def test_train_runs_at_the_limit(tmp_path, glue_dir, roberta_dir):
    path = glue_dir / "SST-2" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[1] = "the cat sees a dog " * 20 + ".\t1"  # 101 tokens: cut to the 62 the encoder takes
    path.write_text("\n".join(lines) + "\n")
    argv = ["--tasks", "sst", "--glue_dir", str(glue_dir), "--model", str(roberta_dir), "--output_dir",
            str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"), "--max_seq_len", "62", "--max_steps", "1",
            "--batch_size", "32", "--no_eval"]
    assert train_main(argv) == 0
