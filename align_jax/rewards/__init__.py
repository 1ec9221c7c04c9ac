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

# ALaRM hierarchical rewards (arXiv 2403.06754): combination, aspect scorers, consistency selection
from align_jax.rewards.alarm import (  # noqa: E402
    HOLISTIC_STATS_FILE, PRESETS as ALARM_PRESETS, AlarmConfig, AlarmOutput, AspectRewards,
    HolisticStats, alarm_rewards, char_to_token_positions, pack_aspect, place_aspect,
    sentence_aspect, sequence_aspect, sigmoid_shape, token_aspect, token_char_ends)
from align_jax.rewards.alarm import preset as alarm_preset  # noqa: E402
from align_jax.rewards.aspects import (  # noqa: E402
    ASPECT_SCORERS, flesch_kincaid_grade, distinct_n, make_aspect_scorer, negated,
    per_sentence_scores, references_from_records)
from align_jax.rewards.consistency import agreement_rate, select_aspects  # noqa: E402

__all__ += [
    "HOLISTIC_STATS_FILE", "ALARM_PRESETS", "AlarmConfig", "AlarmOutput", "AspectRewards",
    "HolisticStats", "alarm_rewards", "char_to_token_positions", "pack_aspect", "place_aspect",
    "sentence_aspect", "sequence_aspect", "sigmoid_shape", "token_aspect", "token_char_ends",
    "alarm_preset",
    "ASPECT_SCORERS", "flesch_kincaid_grade", "distinct_n", "make_aspect_scorer", "negated",
    "per_sentence_scores", "references_from_records", "agreement_rate", "select_aspects",
]
