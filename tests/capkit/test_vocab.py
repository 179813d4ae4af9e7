"""Caption cleaning and the vocabulary: specials, min count, encode/decode round trip, save/load."""

from hypothesis import given
from hypothesis import strategies as st

from capkit.vocab import SPECIALS, Vocab, clean_caption


def test_clean_caption_lowercases_and_strips_punctuation():
    assert clean_caption("A black-and-white Dog, running!  ") == "a black and white dog running"
    assert clean_caption("The dog's ball .") == "the dog's ball"
    assert clean_caption("   ") == ""


def test_build_keeps_frequent_words_after_specials():
    vocab = Vocab.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.words[:4] == list(SPECIALS)
    assert vocab.words[4:] == ["a", "dog"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)


def test_encode_decode_round_trip_and_unknown_words(tmp_path):
    vocab = Vocab.build(["a dog runs on grass"] * 2, min_count=1)
    ids = vocab.encode("A dog runs on GRASS!")
    assert vocab.decode(ids) == "a dog runs on grass"
    assert vocab.encode("a zebra") == [vocab.word_to_id["a"], vocab.unk_id]
    # decode skips pad/start and stops at end
    assert vocab.decode([vocab.start_id, *ids[:2], vocab.end_id, ids[3], vocab.pad_id]) == "a dog"
    vocab.save(tmp_path / "word_to_id.json")
    assert Vocab.load(tmp_path / "word_to_id.json") == vocab


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8)


@given(st.lists(words, min_size=1, max_size=15))
def test_round_trip_property(sentence):
    text = " ".join(sentence)
    vocab = Vocab.build([text], min_count=1)
    assert vocab.decode(vocab.encode(text)) == clean_caption(text) == text
