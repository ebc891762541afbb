"""Byte-level and Hugging Face tokenizers, and the Motif chat template."""

import pytest

from configs import tiny
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import HFTokenizer, load_tokenizer

TEMPLATE = ChatTemplate()


def test_prompt_ends_by_opening_the_think_block():
  assert TEMPLATE.prompt("2+2?") == "<|user|>2+2?<|assistant|><think>"
  with_system = ChatTemplate(system="Be brief.").prompt("q")
  assert with_system == "<|system|>Be brief.<|user|>q<|assistant|><think>"
  assert TEMPLATE.completion("<think>\n1. a\n</think>\nb") == "\n1. a\n</think>\nb<|endoftext|>"
  custom = ChatTemplate(user_tag="<u>", assistant_tag="<a>", think_open="<t>", think_close="</t>")
  assert custom.prompt("q") == "<u>q<a><t>"
  with pytest.raises(ValueError, match="data.template.eos"):
    ChatTemplate(eos="")


def test_byte_tokenizer_round_trips_and_keeps_specials_whole():
  tok = load_tokenizer("", TEMPLATE.special_tokens())
  # 256 bytes + <|pad|> + eos, system, user, assistant, <think>, </think>.
  assert tok.vocab_size == 263 <= tiny.get_config().model.vocab_size
  text = TEMPLATE.prompt("héllo") + TEMPLATE.completion("<think>x</think>y")
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  think, close = tok.token_id("<think>"), tok.token_id("</think>")
  assert ids.count(think) == 1 and ids.count(close) == 1 and tok.token_id("nope") is None
  # "é" is two UTF-8 bytes; each special tag is one id.
  assert tok.encode("<|user|>é") == [tok.token_id("<|user|>"), 0xC3, 0xA9]


def test_hugging_face_tokenizer_json(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  model = tokenizers.models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")
  hf = tokenizers.Tokenizer(model)
  hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  hf.add_special_tokens(list(TEMPLATE.special_tokens()))
  path = str(tmp_path / "tokenizer.json")
  hf.save(path)
  tok = load_tokenizer(path, TEMPLATE.special_tokens())
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == 3 + 6
  ids = tok.encode("<|user|>a b<|assistant|><think>")
  assert ids == [tok.token_id("<|user|>"), 1, 2, tok.token_id("<|assistant|>"),
                 tok.token_id("<think>")]
  import pickle
  assert pickle.loads(pickle.dumps(tok)).encode("b a") == [2, 1]  # Grain workers pickle it


@pytest.fixture(scope="module")
def toy_tokenizer():
  return load_tokenizer("toy", TEMPLATE.special_tokens())


@pytest.mark.parametrize("text", [
    "<|user|>Start with 17. Add 5, then multiply by 3.<|assistant|><think>\n1. 17 + 5 = 22\n"
    "</think>\n\\boxed{22}<|endoftext|>",
    "Ünïcode 250 x2 007 -4 0 199 200 Hello  world\t\n",
    " 1234567 applesauce <|user|><|user|>", "", "0", " ",
])
def test_toy_word_tokenizer_round_trips_any_text(toy_tokenizer, text):
  assert toy_tokenizer.decode(toy_tokenizer.encode(text)) == text


def test_toy_word_tokenizer_keeps_numbers_and_corpus_words_whole(toy_tokenizer):
  from motif_jax.data import toy_vocabulary
  tok = toy_tokenizer
  pieces = [tok.decode([i]) for i in tok.encode("Start with 17. Multiply by 3, then add 199.")]
  assert pieces == ["Start", " with", " 17", ".", " Multiply", " by", " 3", ",", " then",
                    " add", " 199", "."]
  # Outside the vocabulary: numbers from MAX_NUMBER, leading zeros, unknown words -> bytes.
  assert len(tok.encode(f" {toy_vocabulary.MAX_NUMBER}")) == 4
  assert len(tok.encode("07")) == 2 and len(tok.encode(" zebra")) == 6
  assert tok.encode(" zebra 5")[-1] == tok.token_id(" 5")
  # Specials keep the byte tokenizer's ids; the vocabulary is bytes, specials, then 2 ids per
  # word and number, and fits the quickstart model.
  byte = load_tokenizer("", TEMPLATE.special_tokens())
  assert all(tok.token_id(t) == byte.token_id(t) for t in TEMPLATE.special_tokens())
  assert tok.vocab_size == byte.vocab_size + 2 * (len(tok.words) + toy_vocabulary.MAX_NUMBER)
  from configs import sft
  assert tok.vocab_size <= sft.get_config("quickstart").model.vocab_size
  assert max(tok.encode(" ".join(tok.words))) < tok.vocab_size


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused_before_training(stage):
  from configs import rl, sft
  from motif_jax import trainer
  from motif_jax.rl import trainer as rl_trainer
  config = (sft if stage == "sft" else rl).get_config("smoke")
  config.data.tokenizer = "toy"
  config.model.vocab_size = 512
  run_config = trainer.RunConfig if stage == "sft" else rl_trainer.RLRunConfig
  with pytest.raises(ValueError, match=r"model.vocab_size=512 is smaller than the \d+ ids of "
                                       r"data.tokenizer='toy'"):
    run_config.from_config_dict(config)
