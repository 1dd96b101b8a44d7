"""Corpus metrics (BLEU, chrF, TER) and paired significance tests, all through sacrebleu.

sacrebleu's default settings are used throughout, and each score comes with its sacrebleu
signature, so numbers are comparable with published ones. References follow sacrebleu's
layout: a list of reference *sets*, each one line-parallel to the hypotheses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from seq2seq.errors import UserError


def score_corpus(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    hyps_file: str = "<hypotheses>",
    refs_files: Sequence[str] | None = None,
) -> dict:
    """BLEU, chrF and TER of ``hyps`` against one or more reference sets, with signatures.

    Returns ``{"bleu": float, "chrf": float, "ter": float, "signature": {"bleu": str, ...}}``.
    The file names only serve the error messages.
    """
    check_line_counts(hyps, refs, hyps_file, refs_files)
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "ter": TER()}
    scores: dict = {name: metric.corpus_score(list(hyps), refs).score for name, metric in metrics.items()}
    scores["signature"] = {name: metric.get_signature().format() for name, metric in metrics.items()}
    return scores


def check_line_counts(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    hyps_file: str = "<hypotheses>",
    refs_files: Sequence[str] | None = None,
) -> None:
    """Raise a ``UserError`` naming the files unless every reference set matches the hypotheses."""
    if not hyps:
        raise UserError(f"hypotheses file {hyps_file} is empty; there is nothing to score")
    if not refs:
        raise UserError("no references given; pass at least one references file")
    names = refs_files or [f"<references {n}>" for n in range(1, len(refs) + 1)]
    for name, ref_set in zip(names, refs):
        if len(ref_set) != len(hyps):
            raise UserError(
                f"references file {name} has {len(ref_set)} lines but hypotheses file {hyps_file} "
                f"has {len(hyps)}; they must be line-parallel (one hypothesis per reference line)"
            )


def paired_bootstrap(
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    refs: Sequence[Sequence[str]],
    n: int = 1000,
    seed: int = 12345,
    names: tuple[str, str] = ("<system A>", "<system B>"),
    refs_files: Sequence[str] | None = None,
) -> dict:
    """Is system B's BLEU/chrF different from system A's by more than chance?

    sacrebleu's paired bootstrap resampling (Koehn, 2004): ``n`` resampled test sets scored
    for both systems. Returns, per metric, both scores, B's bootstrap mean and 95%
    confidence half-width, and the p-value of the difference (small: unlikely by chance)::

        {"bleu": {"a": 30.1, "b": 31.4, "b_mean": 31.3, "b_ci": 1.2, "p_value": 0.02}, ...}
    """
    check_line_counts(hyps_a, refs, names[0], refs_files)  # names: the files, for errors
    check_line_counts(hyps_b, refs, names[1], refs_files)
    if seed <= 0:
        raise UserError(f"bootstrap seed {seed}: use a positive integer (sacrebleu reads 0 as 'unseeded')")
    metrics = {"bleu": BLEU(), "chrf": CHRF()}
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("A", list(hyps_a)), ("B", list(hyps_b))], metrics, refs, test_type="bs", n_samples=n
        )
        _, results = test()
    # ``results`` maps "System" and then each metric's display name (in the order of
    # ``metrics``) to one Result per system: [baseline A, B].
    per_metric = [value for key, value in results.items() if key != "System"]
    return {
        name: {key: float(value) for key, value in [
            ("a", a.score), ("b", b.score), ("b_mean", b.mean), ("b_ci", b.ci), ("p_value", b.p_value)
        ]}
        for name, (a, b) in zip(metrics, per_metric)
    }


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """PairedTest takes its seed from $SACREBLEU_SEED (its documented knob), not an argument."""
    previous = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = previous
