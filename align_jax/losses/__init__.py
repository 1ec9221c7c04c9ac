"""Pure loss functions over arrays (log-probs, masks, rewards), looked up by name.

Families and their single call signature are listed in ``registry``; importing this package
registers every built-in loss.
"""
from .kto import KTOConfig, UnpairedLogps, apo_zero_unpaired_loss, kl_reference_point, kto_loss, unpaired_loss
from .listwise import (
    ListLogps,
    ListwiseConfig,
    lipo_lambda_loss,
    listwise_loss,
    opo_loss,
    plackett_luce_loss,
    pro_loss,
)
from .policy_gradient import ADVANTAGE_METHODS, advantages, length_factor, reinforce_loss
from .preference import (
    PairLogps,
    PrefConfig,
    bco_delta_update,
    ld_dpo_logps,
    log_sum_sq_probs,
    preference_loss,
    shared_tail_logps,
    wpo_log_weights,
)
from .ld_align import WEIGHT_SCHEMES, ld_align_loss, latent_weights
from .reward_model import RewardLossConfig, RewardPair, bradley_terry_loss
from .token_pg import (
    TOKEN_PG_LOSSES,
    AdvantageConfig,
    TokenPGConfig,
    TokenPGInputs,
    TokenRewards,
    discounted_returns,
    kl_penalty_rewards,
    masked_whiten,
    place_rewards,
    reward_to_go,
)
from .registry import (FAMILIES, LossSpec, get_loss, list_losses, loss_family, loss_spec,
                       register_loss, registered)
from .rpo import RPOConfig, RPOInputs, rpo_diagonal_loss, rpo_loss, rpo_paired_loss, rpo_unpaired_loss

__all__ = [
    "ADVANTAGE_METHODS", "FAMILIES", "LossSpec", "loss_spec", "registered", "KTOConfig", "ListLogps", "ListwiseConfig", "PairLogps", "PrefConfig", "RPOConfig", "RPOInputs", "UnpairedLogps", "advantages",
    "apo_zero_unpaired_loss", "bco_delta_update", "get_loss", "kl_reference_point", "kto_loss",
    "ld_dpo_logps", "length_factor", "lipo_lambda_loss", "list_losses", "listwise_loss",
    "log_sum_sq_probs", "loss_family", "opo_loss", "plackett_luce_loss", "preference_loss",
    "pro_loss", "register_loss", "reinforce_loss", "rpo_diagonal_loss", "rpo_loss",
    "rpo_paired_loss", "rpo_unpaired_loss", "shared_tail_logps", "unpaired_loss", "wpo_log_weights",
    # token-level policy gradients (token_pg.py) and reward-model losses (reward_model.py)
    "TOKEN_PG_LOSSES", "AdvantageConfig", "TokenPGConfig", "TokenPGInputs", "TokenRewards",
    "discounted_returns", "kl_penalty_rewards", "masked_whiten", "place_rewards", "reward_to_go",
    "RewardLossConfig", "RewardPair", "bradley_terry_loss",
    "WEIGHT_SCHEMES", "ld_align_loss", "latent_weights",  # LD-Align (ld_align.py)
]
