"""The data layer: read and validate rows, tokenise, collate (see docs/architecture.md)."""
from preftune.data.collate import Batch, collate
from preftune.data.errors import BadRow, DataError
from preftune.data.formats import Example, load_examples, pairs_to_unpaired, row_to_example
from preftune.data.load_report import LoadReport
from preftune.data.reading import read_rows
from preftune.data.tokenize import Tokenization, TokenizedExample, TruncationStats

__all__ = ["BadRow", "Batch", "DataError", "Example", "LoadReport", "Tokenization", "TokenizedExample",
           "TruncationStats", "collate", "load_examples", "pairs_to_unpaired", "read_rows", "row_to_example"]
