"""Token attributions summed per word (DESIGN.md: BPE pieces are summed per word before words are compared)."""

from __future__ import annotations

import string

import pandas as pd

from rlhf_lens.analyses.attribution.reward import RewardAttributionResult

__all__ = ["mean_word_attributions", "word_attributions"]


def word_attributions(result: RewardAttributionResult) -> pd.DataFrame:
    """One row per word of each text: the sum of its pieces' attributions.

    Words are the `word` column of the result: a byte-level BPE piece that starts with a space
    (Ġ) begins a new word, so " unbelievable" split into " un", "believ", "able" is one word.
    Columns: text, word, word_text (the pieces joined, surrounding whitespace stripped),
    part ("prompt"/"completion"), attribution.
    """
    df = result.df
    if df.empty:
        return pd.DataFrame({"text": [], "word": [], "word_text": [], "part": [], "attribution": []})
    grouped = df.sort_values(["text", "position"]).groupby(["text", "word"], sort=True)
    out = grouped.agg(word_text=("token", "".join), part=("part", "first"), attribution=("attribution", "sum")).reset_index()
    out["word_text"] = out["word_text"].str.strip()
    return out[["text", "word", "word_text", "part", "attribution"]]


def mean_word_attributions(word_df: pd.DataFrame, *, min_count: int = 2, part: str | None = None) -> pd.DataFrame:
    """Mean attribution of each distinct word over its occurrences (`word_attributions` rows), words compared
    lower-cased and without surrounding punctuation ("Great!" and "great" are one word).

    Words seen fewer than `min_count` times, and empty words (whitespace, punctuation alone, special tokens
    that decode to nothing), are left out; `part` keeps only "prompt" or "completion" words.
    Columns: word_text, mean_attribution, count; sorted by mean_attribution, highest first.
    """
    rows = word_df if part is None else word_df[word_df["part"] == part]
    words = rows.assign(word_text=rows["word_text"].str.lower().str.strip(string.punctuation + string.whitespace))
    words = words[words["word_text"] != ""]
    out = words.groupby("word_text").agg(mean_attribution=("attribution", "mean"), count=("attribution", "size")).reset_index()
    out = out[out["count"] >= min_count].sort_values(["mean_attribution", "word_text"], ascending=[False, True])
    return out.reset_index(drop=True)
