"""Corpus stage: records from files, the hub, or the procedural generator."""

from skillray.corpus.load import load_corpus, map_row
from skillray.corpus.records import CorpusError, Record, iter_records, read_records, write_records
from skillray.corpus.stage import run_corpus

__all__ = [
    "CorpusError",
    "Record",
    "iter_records",
    "load_corpus",
    "map_row",
    "read_records",
    "run_corpus",
    "write_records",
]
