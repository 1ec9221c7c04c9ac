"""Rewards: similarity scorers (BERTScore in JAX, embedding cosine, METEOR/ROUGE-L/BLEU) and
reward models (HF sequence-classification checkpoints)."""
from align_jax.rewards.reward_model import load_reward_model
from align_jax.rewards.similarity import (
    NAMES as SIMILARITY_NAMES,
    BERTScorer,
    EmbeddingCosineScorer,
    Scorer,
    TextMetricScorer,
    greedy_match_prf,
    make_similarity,
    mean_pool_cosine,
    rescale_with_baseline,
    strip_for_scoring,
)
from align_jax.rewards.text_metrics import meteor, porter_stem, rouge_l, sentence_bleu

__all__ = [
    "SIMILARITY_NAMES", "BERTScorer", "EmbeddingCosineScorer", "Scorer", "TextMetricScorer",
    "greedy_match_prf", "make_similarity", "mean_pool_cosine", "rescale_with_baseline",
    "strip_for_scoring", "load_reward_model", "meteor", "porter_stem", "rouge_l", "sentence_bleu",
]
