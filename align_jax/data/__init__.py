"""Data layer: readers (JSONL, Parquet, HF `datasets` dirs, TFDS/ArrayRecord), schemas, format
adapters, chat-template tokenisation into numpy batches, a resumable multi-host loader, and the
small datasets the project ships (``load_bundled``). Importing it does not import jax."""
from align_jax.data.bundled import BUNDLED_FORMATS, bundled_path, load_bundled
from align_jax.data.formats import (
    ADAPTERS,
    LoadResult,
    detect_format,
    load_examples,
    pairs_to_references,
    pairs_to_unpaired,
    parse_hh_transcript,
    ranked_to_pairs,
    split_hh_pair,
)
from align_jax.data.loader import DataLoader, epoch_permutation
from align_jax.data.readers import RawRecord, iter_records
from align_jax.data.schemas import (
    DataError,
    PreferencePair,
    PromptReference,
    RankedList,
    UnpairedExample,
    as_record,
    prompt_text,
)
from align_jax.data.tokenize import (
    TokenizeConfig,
    collate_prompt_ids,
    collate_sequences,
    encode_prompts,
    encode_responses,
    pair_batch,
    prompt_batch,
    ranked_batch,
    reference_batch,
    render_prompt,
    sequence_batch,
    unpaired_batch,
)

__all__ = [
    "ADAPTERS", "BUNDLED_FORMATS", "DataError", "DataLoader", "LoadResult", "PreferencePair",
    "PromptReference", "RankedList", "RawRecord", "TokenizeConfig", "UnpairedExample",
    "as_record", "bundled_path", "collate_prompt_ids", "collate_sequences", "detect_format",
    "encode_prompts", "encode_responses", "epoch_permutation", "iter_records", "load_bundled",
    "load_examples", "pair_batch", "pairs_to_references", "pairs_to_unpaired",
    "parse_hh_transcript", "prompt_batch", "prompt_text", "ranked_batch", "ranked_to_pairs",
    "reference_batch", "render_prompt", "sequence_batch", "split_hh_pair", "unpaired_batch",
]
