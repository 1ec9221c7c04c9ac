"""Encoder vs HF transformers (PyTorch, CPU): every layer's hidden states on real weights."""
import json

import numpy as np
import pytest
import torch

from align_jax.models.encoder import (EncoderConfig, default_encoder_dir, encoder_from_dir,
                                      load_encoder)

SENTENCES = ["Hello world, this is a test.", "short",
             "A much longer sentence with many words in it, to force padding of the others.",
             "Tokenisation splits unfamiliar words: antidisestablishmentarianism!"]


def test_minilm_hidden_states_match_hf_bert():
    from transformers import BertModel

    enc, tok = load_encoder()
    batch = tok(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hs = np.asarray(enc(ids, mask))
    model = BertModel.from_pretrained(str(default_encoder_dir())).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
    ref = np.stack([h.numpy() for h in out.hidden_states])
    assert hs.shape == ref.shape == (7, len(SENTENCES), ids.shape[1], 384)
    real = mask.astype(bool)
    assert mask.sum(1).min() < ids.shape[1]  # the test really has padding
    np.testing.assert_allclose(hs[:, real], ref[:, real], atol=1e-4, rtol=0)
    # The truncated path BERTScore uses (first 3 layers, last state only) = HF layer 3.
    last3 = np.asarray(enc(ids, mask, num_layers=3, all_layers=False))
    np.testing.assert_allclose(last3[real], ref[3][real], atol=1e-4, rtol=0)


def test_tiny_random_roberta_matches_hf(tmp_path):
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=48,
                        max_position_embeddings=24, type_vocab_size=1, pad_token_id=1)
    model = RobertaForMaskedLM(cfg).eval()
    with torch.no_grad():  # non-trivial biases/LayerNorms so a mis-mapped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    # ForMaskedLM saves with the `roberta.` prefix plus lm_head weights to ignore.
    model.save_pretrained(tmp_path)
    enc = encoder_from_dir(tmp_path)
    assert enc.config.position_offset == 2
    ids = np.array([[0, 5, 9, 13, 2, 1, 1], [0, 7, 7, 8, 30, 41, 2]])
    mask = (ids != 1).astype(np.int64)
    hs = np.asarray(enc(ids, mask))
    with torch.no_grad():
        out = model.roberta(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            output_hidden_states=True)
    ref = np.stack([h.numpy() for h in out.hidden_states])
    real = mask.astype(bool)
    np.testing.assert_allclose(hs[:, real], ref[:, real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("field,value", [("position_embedding_type", "relative_key"),
                                         ("hidden_act", "relu"), ("model_type", "deberta-v2"),
                                         ("is_decoder", True)])
def test_unsupported_config_names_the_field(field, value):
    cfg = json.loads((default_encoder_dir() / "config.json").read_text())
    EncoderConfig.from_hf(cfg)  # the unmodified config is accepted
    with pytest.raises(ValueError, match=field):
        EncoderConfig.from_hf({**cfg, field: value})


def test_uncached_hub_id_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="local HF cache"):
        load_encoder("nobody/definitely-not-cached-encoder")
