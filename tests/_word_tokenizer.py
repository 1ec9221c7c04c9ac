"""A word-level tokenizer with a chat template, built in memory: the tests that need real
tokenisation (chat templates, special tokens, padding) without any download use it."""
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers


def word_tokenizer(vocab: dict[str, int], template: str) -> transformers.PreTrainedTokenizerFast:
    """`vocab` must hold "[PAD]" (pad, also unknown words) and "</s>" (EOS)."""
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>",
                                               pad_token="[PAD]")
    tok.chat_template = template
    return tok
