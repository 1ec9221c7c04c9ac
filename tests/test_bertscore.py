"""JAX BERTScore vs the `bert-score` package (PyTorch) on the bundled MiniLM weights."""
import numpy as np
import pytest
import torch

from align_jax.models.encoder import default_encoder_dir, load_encoder
from align_jax.rewards import make_similarity, strip_for_scoring
from align_jax.rewards.similarity import BERTScorer

PAIRS = [  # (candidate, reference): paraphrases, partial answers, unrelated, punctuation …
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("I don't know.", "The answer is 42."),
    ("Water boils at 100 degrees Celsius.", "At sea level, water boils at 100 °C."),
    ("He went to the store to buy milk.", "He bought milk at the shop."),
    ("Yes.", "No."),
    ("The quick brown fox jumps over the lazy dog.", "A fast brown fox leaps over a lazy dog."),
    ("Photosynthesis converts light into chemical energy.", "Plants turn sunlight into energy."),
    ("Please call me tomorrow.", "Call me tomorrow, please."),
    ("It is raining heavily today.", "Today there is heavy rain."),
    ("The meeting was cancelled.", "The meeting has been postponed."),
    ("She plays the violin beautifully.", "Her violin playing is beautiful."),
    ("Einstein developed the theory of relativity.", "Relativity was developed by Einstein."),
    ("I love pizza!", "Pizza is my favourite food."),
    ("The stock market fell sharply on Monday.", "Stocks dropped a lot on Monday."),
    ("Turn left at the second traffic light.", "Take the second left at the lights."),
    ("Sorry, I cannot help with that request.", "I can't assist with that."),
    ("Mount Everest is the tallest mountain.", "Everest is Earth's highest peak."),
    ("The train departs at 7:45 am.", "The train leaves at quarter to eight."),
    ("Cats are mammals.", "Dogs are mammals."),
    ("The recipe needs two eggs and flour.", "You need flour and 2 eggs for the recipe."),
    ("He is a doctor.", "He works as a physician."),
    ("The sun rises in the east.", "The sun sets in the west."),
    ("Drink plenty of water when exercising.", "Stay hydrated during exercise."),
    ("A triangle has three sides.", "Triangles have 3 sides."),
    ("Never share your password.", "Do not tell anyone your password."),
    ("The library opens at nine.", "The library is open from 9 am."),
    ("Python is a programming language.", "Python is a kind of snake."),
    ("What a beautiful day!", "The weather is lovely today."),
    ("The children played in the park.", "Kids were playing at the park."),
    ("I have two brothers and one sister.", "I've got one sister and two brothers."),
    ("The capital of Japan is Tokyo.", "Tokyo is Japan's capital city."),
    ("Antidisestablishmentarianism is a long word.", "That word is very long."),
    ("Banks charge interest on loans.", "Loans come with interest charged by banks."),
    ("The movie was boring.", "The film was exciting."),
    ("Wash your hands before eating.", "Clean hands before meals."),
    ("Light travels faster than sound.", "Sound is slower than light."),
    ("The store is closed on Sundays.", "It's not open on Sunday."),
    ("My phone battery died.", "My phone ran out of battery."),
    ("The Earth orbits the Sun.", "The Sun orbits the Earth."),
    ("Ok", "Okay, sounds good."),
    ("Thanks a lot for your help!", "Thank you very much for helping."),
    ("The printer is out of paper.", "There is no paper in the printer."),
    ("He speaks French, German and Spanish.", "He is fluent in three languages."),
    ("The bridge was built in 1932.", "Construction of the bridge ended in 1932."),
    ("Add salt to taste.", "Season with salt as needed."),
    ("The package will arrive on Friday.", "Expect delivery by Friday."),
    ("She won the race easily.", "She lost the race."),
    ("Don't forget to lock the door.", "Remember to lock the door."),
    ("Coffee contains caffeine.", "Caffeine is found in coffee and tea."),
    ("The baby is sleeping.", "Quiet, the baby's asleep."),
    ("Whales are the largest animals.", "The blue whale is the biggest animal ever."),
    ("The answer is 3.14159.", "Pi is approximately 3.14."),
    # A reference token whose cosines to every candidate token are negative (MiniLM): checks
    # the clamp that bert-score's padding mask implies (similarity.py docstring).
    ("Our team repaired a difficult problem although nobody asked.",
     "Our team bought a red house at the end of the summer holidays in the mountains."),
    ("I'm not sure, maybe later?", "Let's decide later."),
    ("The river flooded the village.", "The village was flooded by the river."),
    ("Exercise improves mental health.", "Working out is good for your mind."),
    ("The password must have 8 characters.", "Use at least eight characters."),
    ("Elephants never forget.", "Elephants have excellent memory."),
    ("The car needs new tyres.", "The car's tires must be replaced."),
    ("Snow fell all night.", "It snowed throughout the night."),
    ("He apologised for being late.", "He said sorry for his lateness."),
    ("The museum is free on Tuesdays.", "Admission is free every Tuesday."),
    ("Hello, how can I help you today?", "Hi! What can I do for you?"),
]
assert len(PAIRS) == 64
CANDS, REFS = [c for c, _ in PAIRS], [r for _, r in PAIRS]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


@pytest.fixture(scope="module")
def raw_prf(encoder):
    # Every 64-pair call below hits the same (B=64, T=16) bucket: one compile for the file.
    return np.stack(BERTScorer(encoder=encoder, num_layers=6).prf(CANDS, REFS))


@pytest.mark.parametrize("idf", [False, True])
def test_matches_bert_score_package(encoder, raw_prf, idf):
    import bert_score

    ours = raw_prf if not idf else np.stack(BERTScorer(encoder=encoder, idf=True).prf(CANDS, REFS))
    p, r, f = bert_score.score(CANDS, REFS, model_type=str(default_encoder_dir()), num_layers=6,
                               idf=idf, lang="en", nthreads=0, batch_size=64)
    want = np.stack([p.numpy(), r.numpy(), f.numpy()])
    assert ours.dtype == np.float32 and ours.shape == (3, 64)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
    assert want[2].std() > 0.05  # the pairs really differ (the comparison is not vacuous)
    if idf:  # idf weighting changes the scores, so the idf path is really exercised
        assert np.abs(want - raw_prf).max() > 1e-2


def test_identical_texts_and_empty(encoder):
    f1 = make_similarity("bertscore_f1", encoder=encoder)
    # bert-score's convention for an empty side: P = R = F = 0 (its own code path for ""
    # is broken under transformers v5, so the last 3 rows check the documented rule).
    out = f1(REFS[:61] + ["", "fine", "  "], REFS[:61] + ["fine", "", "x"])
    np.testing.assert_allclose(out[:61], 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[61:], [0.0, 0.0, 0.0])


def test_baseline_rescaling(encoder, raw_prf, tmp_path):
    # Baseline file in bert-score's format (LAYER,P,R,F); like bert-score, row = num_layers.
    rows = ["LAYER,P,R,F"] + [f"{i},{0.1 * i:.2f},{0.05 * i:.2f},{0.07 * i:.2f}" for i in range(7)]
    path = tmp_path / "baseline.tsv"
    path.write_text("\n".join(rows) + "\n")
    b = np.array([0.60, 0.30, 0.42], np.float32)  # = row 6 of the file
    from_tuple = np.stack(BERTScorer(encoder=encoder, baseline=tuple(b)).prf(CANDS, REFS))
    from_file = np.stack(BERTScorer(encoder=encoder, baseline=str(path)).prf(CANDS, REFS))
    np.testing.assert_allclose(from_tuple, (raw_prf - b[:, None]) / (1 - b[:, None]), atol=1e-6)
    np.testing.assert_allclose(from_file, from_tuple, atol=1e-6)


def test_sharded_over_mesh_equals_single_device(encoder, raw_prf):
    import jax

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "tensor"))
    scorer = BERTScorer(encoder=encoder, mesh=mesh)
    # 6 pairs → batch padded to 8 rows, 2 per data shard (kept small: 8 simulated devices
    # on 2 cores are slow).
    sharded = np.stack(scorer.prf(CANDS[:6], REFS[:6]))
    np.testing.assert_allclose(sharded, raw_prf[:, :6], atol=1e-5)


def test_embedding_cosine_matches_torch_mean_pooling(encoder):
    from transformers import BertModel

    _, tok = encoder
    ours = make_similarity("embedding_cosine", encoder=encoder)(CANDS[:8], REFS[:8])
    model = BertModel.from_pretrained(str(default_encoder_dir())).eval()

    def embed(texts):
        b = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state
        m = b["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    want = (embed(CANDS[:8]) * embed(REFS[:8])).sum(-1).numpy()
    np.testing.assert_allclose(ours, want, atol=1e-5)


def test_strip_for_scoring():
    s = "<|im_start|>assistant\nParis is the capital.<|im_end|>\n<|im_start|>user\nmore"
    assert strip_for_scoring(s) == "Paris is the capital."
    assert strip_for_scoring("<s> Hi there </s><pad><pad>", ["<s>", "</s>", "<pad>"]) == "Hi there"
    assert strip_for_scoring("Answer.<|endoftext|>garbage after eos") == "Answer."
    assert strip_for_scoring("plain text stays") == "plain text stays"


def test_make_similarity_interface():
    for name in ("meteor", "rouge_l", "bleu"):
        same = "the cat sat on the mat"
        out = make_similarity(name)([same, "x"], [same, "y"])
        assert out.dtype == np.float32 and out.shape == (2,)
        assert out[0] > 0.9 and out[1] == 0.0
    with pytest.raises(ValueError, match="unknown similarity"):
        make_similarity("bertscore_xyz")
    with pytest.raises(ValueError, match="candidates"):
        make_similarity("rouge_l")(["a"], [])


def test_reference_cache_gives_the_same_scores_and_encodes_each_text_once(encoder, raw_prf):
    """RefAlign-shaped calls: K=4 samples per reference, the same references every step."""
    scorer = BERTScorer(encoder=encoder, num_layers=6)
    cands, refs = CANDS[:16], [r for r in REFS[:4] for _ in range(4)]
    uncached = np.stack(BERTScorer(encoder=encoder, num_layers=6, cache_mb=0).prf(cands, refs))
    first = np.stack(scorer.prf(cands, refs))
    assert scorer.encoded_texts == 16 + 4  # the 4 distinct references once each
    second = np.stack(scorer.prf(cands, refs))
    assert scorer.encoded_texts == 20 + 16  # step 2: only the new candidates
    assert scorer.cache.hits >= 4 and len(scorer.cache) == 4
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, first)
    # pairs scored in any grouping equal the one-batch oracle scores of the same pairs
    np.testing.assert_allclose(np.stack(scorer.prf(CANDS[:4], REFS[:4])), raw_prf[:, :4],
                               atol=1e-5)


def test_embedding_cache_is_bounded():
    from align_jax.rewards.similarity import EmbeddingCache

    cache = EmbeddingCache(max_mb=3 * 1600 / 2 ** 20)  # room for three [100, 4] float32 arrays
    for i in range(5):
        cache.put((i,), np.zeros((100, 4), np.float32))  # 1600 bytes each; 4800 allowed
    assert len(cache) == 3 and cache.get((0,)) is None and cache.get((4,)) is not None
    assert cache.bytes <= cache.max_bytes


def test_cache_sized_batches_give_the_same_scores(encoder, raw_prf):
    """A memory cap splits the 64 texts into smaller power-of-two batches, a denser ladder pads
    them less: the same scores (to float32 rounding), and every batch within the cap."""
    scorer = BERTScorer(encoder=encoder, num_layers=6, batch_mb=0.5, steps_per_octave=16)
    c = encoder[0].config
    ids = sorted(scorer.tokenize(CANDS), key=len)
    chunks = scorer._chunks(ids)
    assert len(chunks) > 1 and sum(map(len, chunks)) == 64
    for ch in chunks:
        T = scorer._bucket(len(ch[-1]))
        assert T % 8 == 0 and len(ch) & (len(ch) - 1) == 0
        assert len(ch) * 4 * (T * c.intermediate_size + c.num_heads * T * T) <= 0.5 * 2 ** 20
    np.testing.assert_allclose(np.stack(scorer.prf(CANDS, REFS)), raw_prf, atol=1e-6, rtol=0)
    uncapped = BERTScorer(encoder=encoder, num_layers=6, batch_mb=0)
    assert len(uncapped._chunks(ids)) == 1
