"""Noise injection keeps the facts whole and in order and reaches the asked length; the tokenizer."""

from __future__ import annotations

import random

import pytest

from ttt_plugin_babilong.generators import generate
from ttt_plugin_babilong.noise import NoiseCorpus, inject, load_corpus, prose_sentences, read_documents
from ttt_plugin_babilong.tokenizer import BABI_WORDS, WordTokenizer, count_tokens, cut_to_tokens


@pytest.fixture(scope="module")
def corpus() -> NoiseCorpus:
    return load_corpus()


@pytest.mark.parametrize("length", [0, 40, 300, 1024])
def test_facts_stay_whole_and_in_order_and_the_context_has_the_asked_length(corpus, length: int) -> None:
    for index in range(10):
        story = generate("qa2", "test", index)
        sentences, positions = inject(story.facts, corpus, "test", length, random.Random(index))
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert tuple(sentences[p] for p in positions) == story.facts
        story_tokens = sum(count_tokens(f) for f in story.facts)
        assert sum(count_tokens(s) for s in sentences) == max(length, story_tokens)
        noise = [s for i, s in enumerate(sentences) if i not in set(positions)]
        assert all(s in corpus.sentences for s in noise[:-1])  # whole noise sentences but the cut last one
        if noise and noise[-1] not in corpus.sentences:
            assert sentences[-1] == noise[-1]  # a cut sentence ends the context


def test_facts_land_at_many_places_of_the_noise(corpus) -> None:
    first = {inject(("Mary went to the kitchen.",), corpus, "train", 400, random.Random(i))[1][0] for i in range(40)}
    assert len(first) > 5


def test_splits_draw_their_noise_from_disjoint_parts_of_the_corpus(corpus) -> None:
    drawn = {split: set(corpus.draw(split, 2000, random.Random(0))[0][:-1]) for split in ("train", "val", "test")}
    assert not drawn["train"] & drawn["test"] and not drawn["train"] & drawn["val"] and not drawn["val"] & drawn["test"]
    ranges = [corpus.split_range(s) for s in ("train", "val", "test")]
    assert ranges[0].stop == ranges[1].start and ranges[1].stop == ranges[2].start == ranges[2].stop - len(ranges[2])


def test_the_default_corpus_is_prose_without_facts(corpus) -> None:
    assert len(corpus.sentences) > 1000 and sum(corpus.tokens) > 40_000
    assert not any("::=" in s for s in corpus.sentences)


def test_prose_sentences_leave_out_code_titles_and_facts() -> None:
    document = (
        "A Title\n*******\n\nThe first sentence is prose. Mary went to the kitchen. The second one\n"
        "spans two lines!\n\n   for x in range(3):\n       print(x)\n\nok.\n"
    )
    assert prose_sentences(document) == ["The first sentence is prose.", "The second one spans two lines!"]


def test_noise_paths_are_read(tmp_path) -> None:
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"Sentence number {i} is about nothing at all." for i in range(50)))
    corpus = NoiseCorpus.from_documents(read_documents([str(tmp_path)]))
    assert len(corpus.sentences) == 50 and corpus.split_range("test") == range(45, 50)
    sentences, positions = inject(("John went to the office.",), corpus, "test", 100, random.Random(0))
    assert sum(count_tokens(s) for s in sentences) == 100  # a short range is read again from its start
    with pytest.raises(ValueError, match="no such file"):
        read_documents([str(tmp_path / "missing.txt")])


def test_babi_words_are_single_tokens_and_text_round_trips() -> None:
    tok = WordTokenizer(buckets=64)
    assert tok.vocab_size == 4 + len(BABI_WORDS) + 64
    fact = "Daniel journeyed to the hallway."
    ids = tok.encode(fact)
    assert len(ids) == 6 and all(i < tok.first_bucket for i in ids)
    assert tok.decode(ids) == fact
    assert tok.encode("KITCHEN") == tok.encode("kitchen")
    other = tok.encode("An immutable sequence, of numbers.")
    assert len(other) == 7 and tok.first_bucket <= other[1] < tok.vocab_size
    assert other == WordTokenizer(buckets=64).encode("An immutable sequence, of numbers.")  # fixed ids
    assert tok.decode(tok.encode("office", eos=True)) == "office [EOS]"
    assert count_tokens("It's 42 (isn't it)?") == len(tok.encode("It's 42 (isn't it)?")) == 11
    assert cut_to_tokens("The apple, and the milk.", 3) == "The apple,"
