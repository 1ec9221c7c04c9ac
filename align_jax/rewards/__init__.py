"""Rewards: similarity scorers (BERTScore in JAX, embedding cosine, METEOR/ROUGE-L/BLEU), harmless
scorers, both registered by name (``registry``), and their composition into named, weighted
components (``compose``), reward models (HF sequence-classification checkpoints) and ALaRM's
hierarchical rewards. Importing this package registers every built-in scorer."""
from align_jax.rewards.compose import (RewardFn, combine_rewards, component, harmless_reward,
                                       similarity_reward, similarity_scorer)
from align_jax.rewards.registry import (SCORER_FAMILIES, list_scorers, make_scorer,
                                        register_scorer, scorer_spec)
from align_jax.rewards.safety import make_harmless_scorer
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
    "RewardFn", "SCORER_FAMILIES", "combine_rewards", "component", "harmless_reward",
    "list_scorers", "make_harmless_scorer", "make_scorer", "register_scorer", "scorer_spec",
    "similarity_reward", "similarity_scorer",
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
