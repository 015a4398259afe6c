"""The longqa scorer against hand-computed EM / token F1 / ROUGE-L (SQuAD normalisation: lowercase, no
punctuation, no a/an/the, single spaces). Every expected number is worked out in the comment beside it."""

from __future__ import annotations

import pytest

from ctxext.evals.qa_metrics import exact_match, lcs_length, normalize, rouge_l, score, token_f1

CASES = [
    # (pred, golds, em, f1, rougeL)
    # 1 case + punctuation + article: "The Cat!" -> "the cat" -> "cat" == "cat"
    ("The Cat!", ["cat"], 1.0, 1.0, 1.0),
    # 2 two articles, comma, period: "a dog, an owl" -> "dog owl"; "Dog owl." -> "dog owl"
    ("a dog, an owl", ["Dog owl."], 1.0, 1.0, 1.0),
    # 3 extra token: pred [big, red, barn], gold [red, barn]; overlap 2, P = 2/3, R = 1, F1 = 2·(2/3)/(5/3) = 0.8;
    #   LCS = 2 (red barn) -> same 0.8
    ("the big red barn", ["red barn"], 0.0, 0.8, 0.8),
    # 4 order: bag of words identical -> F1 1; LCS([barn, red], [red, barn]) = 1 -> P = R = 1/2 -> 0.5
    ("barn red", ["red barn"], 0.0, 1.0, 0.5),
    # 5 several golds, max: "PARIS" -> "paris" == pred -> all 1 (the others would give EM 0)
    ("Paris", ["London", "paris, France", "PARIS"], 1.0, 1.0, 1.0),
    # 6 several golds, partial: pred [in, year, 1812];
    #   gold "1812": overlap 1, P = 1/3, R = 1 -> F1 = (2/3)/(4/3) = 0.5; LCS 1 -> 0.5
    #   gold "year of 1812" [year, of, 1812]: overlap 2, P = R = 2/3 -> F1 = 2/3; LCS = 2 (year 1812) -> 2/3
    #   max -> F1 2/3, ROUGE-L 2/3
    ("in the year 1812", ["1812", "year of 1812"], 0.0, 2 / 3, 2 / 3),
    # 7 empty prediction vs a real answer: one side empty -> 0
    ("", ["cat"], 0.0, 0.0, 0.0),
    # 8 both normalise to nothing: "The." -> "", "a" -> "" -> equal, and both-empty scores 1
    ("The.", ["a"], 1.0, 1.0, 1.0),
    # 9 repeated tokens: pred [cat, cat, cat], gold [cat]: multiset overlap min(3, 1) = 1, P = 1/3, R = 1 -> 0.5;
    #   LCS 1 -> 0.5
    ("cat cat cat", ["cat"], 0.0, 0.5, 0.5),
    # 10 Unicode punctuation: "“Mr. Darcy’s”" -> "mr darcys" (curly quotes, period, apostrophe dropped)
    ("“Mr. Darcy’s”", ["mr darcys"], 1.0, 1.0, 1.0),
    # 11 a hyphen joins words as in SQuAD: "well-known" -> [wellknown] vs [well, known]: no overlap -> 0
    ("well-known", ["well known"], 0.0, 0.0, 0.0),
    # 12 long answer: pred [he, went, to, sea, to, hunt, white, whale] (8), gold [ahab, hunted, white, whale, at,
    #   sea] (6). Overlap {sea, white, whale} = 3 (hunt != hunted): P = 3/8, R = 1/2, F1 = (3/8)/(7/8) = 3/7.
    #   LCS: "sea" precedes "white whale" in pred but follows it in gold -> LCS = 2: P = 1/4, R = 1/3,
    #   F = 2·(1/12)/(7/12) = 2/7
    ("He went to the sea to hunt the white whale.", ["Ahab hunted the white whale at sea"], 0.0, 3 / 7, 2 / 7),
    # 13 articles only as whole words: "theater" and "answer" keep their letters
    ("the theater", ["theater"], 1.0, 1.0, 1.0),
    ("answer", ["an answer"], 1.0, 1.0, 1.0),
    # 14 whitespace collapses: "  new\n york\t" -> "new york"
    ("  new\n york\t", ["New York"], 1.0, 1.0, 1.0),
    # 15 a single gold given as a string, not a list: pred [green, house], gold [house]: P = 1/2, R = 1 -> 2/3;
    #   LCS 1 -> 2/3
    ("green house", "house", 0.0, 2 / 3, 2 / 3),
]


@pytest.mark.parametrize("pred,golds,em,f1,rl", CASES)
def test_hand_computed(pred, golds, em, f1, rl):
    s = score(pred, golds)
    assert s["em"] == em
    assert s["f1"] == pytest.approx(f1, abs=1e-12)
    assert s["rougeL"] == pytest.approx(rl, abs=1e-12)


def test_single_pair_functions_and_normalize():
    # punctuation is deleted, not replaced by a space (as in SQuAD): "fox—an" -> "foxan", so that "an" stays
    assert normalize("  The QUICK, brown fox—an (old) one!  ") == "quick brown foxan old one"
    assert exact_match("An Apple", "apple") == 1.0 and exact_match("apples", "apple") == 0.0
    # [x, y, z] vs [x, z]: overlap 2, P = 2/3, R = 1 -> 0.8
    assert token_f1("x y z", "x z") == pytest.approx(0.8)
    assert rouge_l("x y z", "z x") == pytest.approx(0.4)  # LCS 1: P = 1/3, R = 1/2 -> (1/3)/(5/6) = 0.4


def test_lcs_length():
    # the textbook example: LCS(ABCBDAB, BDCABA) = 4 (e.g. BCBA)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0 and lcs_length(["a", "b"], ["a", "b"]) == 2


def test_no_gold_is_an_error():
    with pytest.raises(ValueError, match="no gold answer"):
        score("x", [])
