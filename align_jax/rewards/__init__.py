"""Rewards: similarity scorers (BERTScore in JAX, embedding cosine, METEOR/ROUGE-L/BLEU), harmless
scorers, both registered by name (``registry``), and their composition into named, weighted
components (``compose``). Importing this package registers every built-in scorer."""
from align_jax.rewards.compose import (RewardFn, combine_rewards, component, harmless_reward,
                                       similarity_reward, similarity_scorer)
from align_jax.rewards.registry import (SCORER_FAMILIES, list_scorers, make_scorer,
                                        register_scorer, scorer_spec)
from align_jax.rewards.safety import make_harmless_scorer
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
    "strip_for_scoring", "meteor", "porter_stem", "rouge_l", "sentence_bleu",
]
