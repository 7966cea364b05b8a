"""Offline labeller and judge: deterministic word statistics, for runs without a chat endpoint.

**Labeller** (:class:`ContrastiveKeywords`): the words that best tell pole A's examples from pole
B's, by a log-odds ratio with an informative prior, in the spirit of Monroe, Colaresi & Quinn
(2008, "Fightin' Words"), on document presence: a word counts once per example, so one long
example cannot dominate, and a word as common in both groups scores exactly 0. Presence
comes from scikit-learn's ``CountVectorizer(binary=True)`` fitted on the whole corpus; each
word's corpus presence rate is a Beta prior worth ``prior_docs`` pseudo-examples, which shrinks
rare words toward "no difference". scikit-learn has no such scorer, hence the few lines below.

**Judge** (:class:`KeywordJudge`): places an example on the side whose label keywords it
contains more of (ties abstain). With offline labels this measures *lexical* fidelity: whether
the words that separated the labelled examples also separate unseen examples of the same
poles. It says nothing about whether a human would find the label apt.
"""

from __future__ import annotations

import numpy as np

from skillray.interpret.labels import Axis, Label

# Words of 2+ letters (no digits): numbers in math corpora are example-specific noise.
TOKEN_PATTERN = r"(?u)\b[^\W\d_][^\W\d_]+\b"


def make_vectorizer(min_df: int = 1):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN, stop_words="english", min_df=min_df, binary=True)


class ContrastiveKeywords:
    """Contrastive keywords of two groups of texts.

    Parameters
    ----------
    n_keywords : int
        Keywords per side.
    min_df : int
        Ignore words found in fewer corpus texts than this (lowered to 1 for tiny corpora).
    prior_docs : float
        Weight of the prior, in pseudo-examples per group.
    min_z : float
        Keywords need a z-score of at least this (about one standard error by default).

    Attributes
    ----------
    vectorizer_ : fitted CountVectorizer
    vocabulary_ : ndarray of shape (V,), str
    corpus_rate_ : ndarray of shape (V,)
        Share of corpus examples containing each word.
    """

    def __init__(self, n_keywords: int = 8, min_df: int = 2, prior_docs: float = 2.0, min_z: float = 1.0):
        self.n_keywords = n_keywords
        self.min_df = min_df
        self.prior_docs = prior_docs
        self.min_z = min_z

    def fit(self, corpus_texts: list[str]) -> "ContrastiveKeywords":
        """Learn the vocabulary and the prior from every text of the corpus."""
        min_df = self.min_df if len(corpus_texts) >= 2 * self.min_df else 1
        try:
            self.vectorizer_ = make_vectorizer(min_df)
            counts = self.vectorizer_.fit_transform(corpus_texts)  # (N, V) sparse 0/1
        except ValueError as e:  # sklearn: "empty vocabulary"
            raise ValueError(
                f"offline labeller: no words left in the corpus ({len(corpus_texts)} texts, min_df={min_df}): {e}; "
                "lower interpret.min_df or use an LLM labeller"
            ) from None
        df = np.asarray(counts.sum(0), dtype=np.float64).ravel()  # (V,)
        self.vocabulary_ = self.vectorizer_.get_feature_names_out()
        self.corpus_rate_ = df / counts.shape[0]
        return self

    def counts(self, texts: list[str]) -> np.ndarray:
        """(V,) number of ``texts`` containing each vocabulary word."""
        return np.asarray(self.vectorizer_.transform(texts).sum(0), dtype=np.float64).ravel()

    def zscores(self, a_texts: list[str], b_texts: list[str]) -> np.ndarray:
        """(V,) log-odds z-score of each word's presence, positive = typical of ``a_texts``.

        With y_a of the D_a texts of A containing word w, corpus rate r_w and prior weight a0:
        alpha = a0 r_w + 1/2, beta = a0 (1 - r_w) + 1/2,
        lo_a = log(y_a + alpha) - log(D_a - y_a + beta) (same for b), delta = lo_a - lo_b,
        var = sum of the four reciprocals, z = delta / sqrt(var).
        """
        ya, yb = self.counts(a_texts), self.counts(b_texts)  # (V,) each
        da, db = len(a_texts), len(b_texts)
        alpha = self.prior_docs * self.corpus_rate_ + 0.5
        beta = self.prior_docs * (1.0 - self.corpus_rate_) + 0.5
        delta = (np.log(ya + alpha) - np.log(da - ya + beta)) - (np.log(yb + alpha) - np.log(db - yb + beta))
        var = 1 / (ya + alpha) + 1 / (da - ya + beta) + 1 / (yb + alpha) + 1 / (db - yb + beta)
        return delta / np.sqrt(var)

    def label(self, a_texts: list[str], b_texts: list[str]) -> Label:
        """The contrastive label of pole A (``a_texts``) vs pole B (``b_texts``); ties broken by word."""
        z = self.zscores(a_texts, b_texts)
        words = self.vocabulary_
        # Deterministic order: by score, then alphabetically (np.lexsort sorts by the last key first).
        order_a = np.lexsort((words, -z))
        order_b = np.lexsort((words, z))
        ka = [int(i) for i in order_a[: self.n_keywords] if z[i] >= self.min_z]
        kb = [int(i) for i in order_b[: self.n_keywords] if -z[i] >= self.min_z]
        kw_a, kw_b = [str(words[i]) for i in ka], [str(words[i]) for i in kb]
        side_a = ", ".join(kw_a[:2]) or "(no distinctive words)"
        side_b = ", ".join(kw_b[:2]) or "(no distinctive words)"
        return Label(
            short=f"{side_a} vs {side_b}",
            side_a=side_a,
            side_b=side_b,
            axes=[Axis("vocabulary", ", ".join(kw_a[:5]), ", ".join(kw_b[:5]))],
            keywords_a=kw_a,
            keywords_b=kw_b,
            source="offline",
            scores_a=[round(float(z[i]), 4) for i in ka],
            scores_b=[round(float(-z[i]), 4) for i in kb],
        )

    def words(self, text: str) -> set[str]:
        """The vocabulary-independent word set of a text (same tokenizer and stop words)."""
        return set(self.vectorizer_.build_analyzer()(text))


class KeywordJudge:
    """Places a text on the label side whose keywords it contains more of.

    ``judge`` returns "a", "b" or None (a tie: abstain, scored as chance). Keywords of LLM
    labels, which have none listed, are the words of each side's text.
    """

    def __init__(self, keywords: ContrastiveKeywords):
        self.keywords = keywords

    def sides(self, label: Label) -> tuple[set[str], set[str]]:
        a = set(label.keywords_a) or self.keywords.words(label.describe("a"))
        b = set(label.keywords_b) or self.keywords.words(label.describe("b"))
        return a - b, b - a

    def judge(self, label: Label, text: str) -> str | None:
        a, b = self.sides(label)
        w = self.keywords.words(text)
        score = len(w & a) - len(w & b)
        return "a" if score > 0 else "b" if score < 0 else None
