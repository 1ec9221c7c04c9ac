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


# The chat vocabulary and template the tiny online tests share (RefAlign, ALaRM, SFT warm-up).
CHAT_WORDS = ["[PAD]", "</s>", "<user>", "<assistant>"] + [f"w{i}" for i in range(12)] + ["yes", "no"]
CHAT_VOCAB = {w: i for i, w in enumerate(CHAT_WORDS)}
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def tiny_chat_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return word_tokenizer(CHAT_VOCAB, CHAT_TEMPLATE)


def tiny_chat_cfg(**kw):
    """A 2-layer decoder over the chat vocabulary."""
    from align_jax.models.config import DecoderConfig

    return DecoderConfig(vocab_size=len(CHAT_VOCAB), hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                         eos_token_id=CHAT_VOCAB["</s>"], pad_token_id=0, **kw)
