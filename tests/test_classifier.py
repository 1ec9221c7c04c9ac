"""Sequence-classification scorer (harmless/cost model hook) vs HF BertForSequenceClassification."""
import numpy as np
import pytest
import torch
import transformers

from align_jax.models.encoder import default_encoder_dir
from align_jax.rewards.classifier import load_sequence_classifier
from align_jax.rewards.safety import make_harmless_scorer


@pytest.fixture(scope="module")
def tiny_clf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(cfg).eval()
    m.save_pretrained(d)
    transformers.AutoTokenizer.from_pretrained(str(default_encoder_dir())).save_pretrained(d)
    return d, m


def test_logits_match_hf(tiny_clf_dir):
    d, m = tiny_clf_dir
    texts = ["How do I bake bread?", "I can't help with that.", "Sure, here is how to do it."]
    ours = load_sequence_classifier(d)(texts)
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    with torch.no_grad():
        ref = m(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    scorer = make_harmless_scorer("classifier", classifier_path=str(d), classifier_label=1)
    h = scorer(["q"] * 3, texts, [{}] * 3)
    with torch.no_grad():
        ref2 = m(**tok([f"q\n{t}" for t in texts], padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(h, ref2[:, 1].numpy(), atol=1e-4)


def test_not_a_classifier_is_a_clear_error():
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        load_sequence_classifier(default_encoder_dir())
