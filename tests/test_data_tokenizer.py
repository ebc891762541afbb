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
