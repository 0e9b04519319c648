import pytest
import torch

from fmaudit.corpus.stats import unigram_cross_entropy_bits
from fmaudit.results.audit import unigram_cross_entropy


def test_histogram_form_equals_per_token_form():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 50, (3000,), generator=g)
    evals = torch.randint(0, 60, (777,), generator=g)  # includes tokens never seen in training
    train_counts = torch.bincount(train, minlength=60).double()
    label_counts = torch.bincount(evals, minlength=60).double()
    assert unigram_cross_entropy(train_counts, label_counts) == pytest.approx(
        unigram_cross_entropy_bits(train_counts, evals, vocab_size=60), rel=1e-12)
