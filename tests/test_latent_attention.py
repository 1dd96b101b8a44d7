"""Hard, monotonic, Gaussian-mixture and coverage attention: each against its paper's property.

    hard        decoding reads exactly one encoder state; REINFORCE's gradient is unbiased;
                the Gumbel draws follow p; the exact sum is a distribution
    monotonic   decoding never moves back; the expected alignment is the average of the
                sampled hard alignments; MoChA spreads each stop over its chunk
    gmm         the means never move back; the weights add up to about 1 inside a long source
    coverage    the state is the attention received so far; See et al.'s loss
And tiny models that learn copy-reverse (hard) and copy (monotonic) with them.
"""

import math

import pytest
import torch

from seq2seq.config import Config, ModelConfig
from seq2seq.models.builder import build_model
from seq2seq.models.gmm_attention import GMMAttention, mixture_weights
from seq2seq.models.hard_attention import HardAttention, marginal_log_probs
from seq2seq.models.monotonic import chunk_weights, expected_alignment, hard_alignment
from seq2seq.models.scores import DotScore, build_score
from seq2seq.models.attention import GlobalAttention
from seq2seq.training.objective import coverage_penalty, leave_one_out_baseline, reinforce_surrogate, returns_to_go
from tests.synthetic import make_reverse_batch, token_accuracy, train_tiny

DIM = 8
KEY_MASK = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])


def call(attention, queries, values, mask=KEY_MASK, state=None):
    state = attention.initial_state(values, mask) if state is None else state
    return attention(queries, attention.precompute(values), values, mask, 0, state)


# ------------------------------------------------------------------ hard attention


def test_hard_attention_decodes_exactly_one_encoder_state():
    torch.manual_seed(0)
    attention = HardAttention(build_score("general", DIM, DIM)).eval()
    queries, values = torch.randn(2, 5, DIM), torch.randn(2, 6, DIM)
    attended = call(attention, queries, values)
    positions = attended.weights.argmax(dim=-1)
    assert torch.equal(attended.weights, torch.nn.functional.one_hot(positions, 6).float())
    assert torch.all(positions[1] < 3)  # never padding
    assert torch.equal(attended.context, values[torch.arange(2).unsqueeze(1), positions])


def test_reinforce_gradient_is_unbiased():
    """The mean of many REINFORCE estimates (leave-one-out baseline) matches the exact gradient
    of E_p[f(a)] within 4 standard errors, on a 4-position toy."""
    torch.manual_seed(0)
    keys = torch.randn(1, 4, DIM)
    query = torch.randn(1, 1, DIM, requires_grad=True)
    reward_of = torch.tensor([1.0, -0.5, 2.0, 0.3])
    mask = torch.ones(1, 4, dtype=torch.bool)
    attention = HardAttention(DotScore(scaled=False), "reinforce").train()
    exact = torch.autograd.grad((torch.softmax(query @ keys.transpose(1, 2), -1)[0, 0] * reward_of).sum(), query)[0]

    rows, draws = 8, 400
    estimates = []
    for _ in range(draws):
        attended = attention(query.expand(rows, 1, DIM), keys.expand(rows, 4, DIM), keys.expand(rows, 4, DIM),
                             mask.expand(rows, 4), 0, {})
        rewards = attended.weights[:, :, :] @ reward_of  # [rows, 1]
        surrogate = reinforce_surrogate(attended.weights, attended.log_probs, rewards,
                                        torch.ones(rows, 1), entropy_bonus=0.0)
        estimates.append(-torch.autograd.grad(surrogate, query)[0].flatten() / rows)
    estimates = torch.stack(estimates)
    mean, error = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    assert torch.all((mean - exact.flatten()).abs() <= 4 * error + 1e-4), (mean, exact)


def test_returns_and_leave_one_out_baseline():
    rewards = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    returns = returns_to_go(rewards, mask)
    assert torch.equal(returns, torch.tensor([[-6.0, -5.0, -3.0], [-9.0, -5.0, 0.0]]))
    baseline = leave_one_out_baseline(returns, mask)
    # Each row's baseline is the other row's return; a step with one real row has none.
    assert torch.equal(baseline, torch.tensor([[-9.0, -5.0, 0.0], [-6.0, -5.0, 0.0]]))


def test_gumbel_draws_follow_p_and_pass_gradients():
    torch.manual_seed(0)
    scores = torch.tensor([[[2.0, 0.0, -1.0, 1.0]]])
    attention = HardAttention(DotScore(scaled=False), "gumbel", temperature=0.5).train()
    query = torch.zeros(4000, 1, 4, requires_grad=True)
    keys = torch.eye(4).unsqueeze(0).expand(4000, 4, 4)
    attended = attention(query + scores, keys, keys, torch.ones(4000, 4, dtype=torch.bool), 0, {})
    assert torch.all(attended.weights.sum(-1) == 1) and torch.all((attended.weights == 0) | (attended.weights == 1))
    frequencies = attended.weights.mean(dim=(0, 1))
    assert torch.allclose(frequencies, scores.softmax(-1).flatten(), atol=0.03)
    attended.context[..., 0].sum().backward()
    assert query.grad.abs().sum() > 0  # straight through


def test_exact_hard_attention_decodes_the_model_it_trains():
    """Without dropout, training and decoding compute the same sum over positions (and the
    step-by-step decoder equals the full pass, tests/test_models.py)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gru", attention="hard", hard_attention="exact", embed_dim=16, hidden_dim=16,
                      encoder_layers=1, decoder_layers=1, dropout=0.0)
    model = build_model(cfg, 20, 20)
    src, tgt_in, _ = make_reverse_batch(4, 20, 3, 7, torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained, decoded = model.train()(src, tgt_in), model.eval()(src, tgt_in)
    assert torch.allclose(trained, decoded, atol=1e-5)
    assert torch.allclose(decoded.exp().sum(-1), torch.ones(decoded.shape[:2]), atol=1e-5)


def test_exact_marginal_is_a_distribution_and_the_mixture():
    torch.manual_seed(0)
    candidate_logits, log_p = torch.randn(3, 5, 7), torch.randn(3, 5).log_softmax(-1)
    marginal = marginal_log_probs(candidate_logits, log_p)
    assert torch.allclose(marginal.exp().sum(-1), torch.ones(3))
    mixture = (log_p.exp().unsqueeze(-1) * candidate_logits.softmax(-1)).sum(1)
    assert torch.allclose(marginal.exp(), mixture, atol=1e-6)


# ------------------------------------------------------------------ monotonic attention


def sample_hard_alignments(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Raffel et al.'s stochastic process, one sample: p [T,S] stop probabilities -> one-hot
    alignments [T,S] (zero rows once the reading has run off the end)."""
    steps, length = p.shape
    alignments = torch.zeros(steps, length)
    position = 0
    for i in range(steps):
        while position < length and torch.rand((), generator=generator) >= p[i, position]:
            position += 1
        if position == length:
            break
        alignments[i, position] = 1.0
    return alignments


def test_expected_alignment_is_the_average_of_sampled_hard_alignments():
    torch.manual_seed(0)
    energies = torch.randn(4, 6) * 1.5  # 4 output steps over 6 positions
    mask = torch.ones(1, 6, dtype=torch.bool)
    p = torch.sigmoid(energies)
    previous = torch.zeros(1, 6)
    previous[0, 0] = 1.0
    expected = []
    for i in range(4):
        previous = expected_alignment(energies[i : i + 1], mask, previous)
        expected.append(previous[0])
    expected = torch.stack(expected)
    generator = torch.Generator().manual_seed(1)
    samples = 8000
    average = sum(sample_hard_alignments(p, generator) for _ in range(samples)) / samples
    error = (expected * (1 - expected) / samples).sqrt()
    assert torch.all((average - expected).abs() <= 4 * error + 2e-3), (average, expected)


def reference_alignment(p: list[float], previous: list[float]) -> list[float]:
    """alpha_j = p_j sum_{k<=j} previous_k prod_{l=k}^{j-1} (1 - p_l), term by term in float64."""
    alignment = []
    for j in range(len(p)):
        total = 0.0
        for k in range(j + 1):
            keep = 1.0
            for l in range(k, j):  # noqa: E741
                keep *= 1 - p[l]
            total += previous[k] * keep
        alignment.append(p[j] * total)
    return alignment


def test_expected_alignment_is_raffels_recurrence_and_ignores_padding():
    torch.manual_seed(0)
    energies, previous = torch.randn(2, 6) * 3, torch.rand(2, 6).softmax(-1)
    previous[1, 3:] = 0.0
    alignment = expected_alignment(energies, KEY_MASK, previous)
    for row in range(2):
        real = int(KEY_MASK[row].sum())
        expected = reference_alignment(torch.sigmoid(energies[row, :real]).double().tolist(),
                                       previous[row, :real].double().tolist())
        assert torch.allclose(alignment[row, :real].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    assert torch.all(alignment[1, 3:] == 0)


def test_expected_alignment_has_no_division_by_a_vanishing_product():
    """Energies of +8 make 1 - p = 3e-4: the products of Raffel et al.'s closed form,
    cumprod(1 - p), reach 0 within a dozen positions and its division by them gives NaN."""
    energies = torch.full((1, 300), 8.0, requires_grad=True)
    alignment = expected_alignment(energies, torch.ones(1, 300, dtype=torch.bool), torch.full((1, 300), 1 / 300))
    assert torch.isfinite(alignment).all() and alignment.sum() <= 1 + 1e-5
    assert torch.allclose(alignment, torch.full((1, 300), torch.sigmoid(torch.tensor(8.0)).item() / 300), rtol=1e-3)
    alignment.sum().backward()
    assert torch.isfinite(energies.grad).all()


def test_monotonic_alignment_stays_float32_under_autocast():
    energies, previous = torch.randn(1, 40), torch.rand(1, 40).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alignment = expected_alignment(energies, torch.ones(1, 40, dtype=torch.bool), previous)
    assert alignment.dtype == torch.float32
    assert torch.allclose(alignment, expected_alignment(energies, torch.ones(1, 40, dtype=torch.bool), previous))


def test_hard_alignment_reads_forward_from_the_previous_position():
    energies = torch.tensor([[5.0, -1.0, 3.0, -1.0, 2.0, 0.5]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    at = lambda k: torch.nn.functional.one_hot(torch.tensor([k]), 6).float()  # noqa: E731
    assert torch.equal(hard_alignment(energies, mask, at(1)), at(2))  # position 0 is behind
    assert torch.equal(hard_alignment(energies, mask, at(2)), at(2))  # may stay
    assert torch.equal(hard_alignment(energies.clamp(max=-1), mask, at(2)), torch.zeros(1, 6))  # runs off
    assert torch.equal(hard_alignment(energies, mask, torch.zeros(1, 6)), torch.zeros(1, 6))  # and stays off


def test_monotonic_decoding_never_moves_back():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gru", attention="monotonic", embed_dim=16, hidden_dim=16,
                                    encoder_layers=1, decoder_layers=1), 20, 20).eval()
    src, tgt_in, _ = make_reverse_batch(16, 20, 6, 12, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, weights = model(src, tgt_in, return_attention=True)
    attended = weights.sum(-1) > 0
    positions = weights.argmax(-1)
    assert attended[:, 0].any() and not attended.all()  # it stops, and some runs end
    for row, seen in zip(positions, attended):
        kept = row[seen]
        assert torch.all(kept[1:] >= kept[:-1])
        assert torch.all(~seen[seen.int().argmin():]) or seen.all()  # once off the end, off for good


def test_mocha_spreads_each_stop_over_its_chunk():
    energies = torch.randn(1, 6)
    stop = torch.nn.functional.one_hot(torch.tensor([4]), 6).float()
    beta = chunk_weights(stop, energies, torch.ones(1, 6, dtype=torch.bool), chunk_size=3)
    assert torch.allclose(beta[0, 2:5], energies[0, 2:5].softmax(-1)) and torch.all(beta[0, [0, 1, 5]] == 0)
    spread = torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0, 0.0]])
    assert torch.allclose(chunk_weights(spread, energies, KEY_MASK[:1], 2).sum(), spread.sum())
    # chunk 1 is the alignment itself
    assert torch.allclose(chunk_weights(spread, energies, KEY_MASK[:1], 1), spread)


# ------------------------------------------------------------------ Gaussian mixtures


def test_gmm_means_never_move_back_and_weights_sum_near_one_inside_a_long_source():
    torch.manual_seed(0)
    attention = GMMAttention(DIM, components=3)
    values, mask = torch.randn(2, 200, DIM), torch.ones(2, 200, dtype=torch.bool)
    state = attention.initial_state(values, mask)
    for step in range(60):
        attended = call(attention, torch.randn(2, 1, DIM) * 3, values, mask, state)
        assert torch.all(attended.state["means"] >= state["means"])
        state = attended.state
        if step > 5:  # the components are inside the sentence now
            assert torch.allclose(attended.weights.sum(-1), torch.ones(2, 1), atol=1e-3)


def test_gmm_weights_are_cell_masses():
    weights = mixture_weights(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]), 5)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert weights[0, 2].item() == pytest.approx(cdf(0.5) - cdf(-0.5), abs=1e-6)
    assert weights[0, 0].item() == pytest.approx(cdf(-1.5) - cdf(-2.5), abs=1e-6)


# ------------------------------------------------------------------ coverage


def test_coverage_state_is_the_attention_received_so_far():
    torch.manual_seed(0)
    attention = GlobalAttention(build_score("additive", DIM, DIM, coverage=True), coverage=True)
    with torch.no_grad():
        attention.score.coverage_weight.fill_(1.0)
    values = torch.randn(2, 6, DIM)
    state, received = attention.initial_state(values, KEY_MASK), torch.zeros(2, 6)
    for _ in range(4):
        attended = call(attention, torch.randn(2, 1, DIM), values, state=state)
        received += attended.weights[:, 0]
        state = attended.state
        assert torch.allclose(state["coverage"], received)
    # and the coverage changes the scores
    fresh = call(attention, torch.ones(2, 1, DIM), values).weights
    covered = call(attention, torch.ones(2, 1, DIM), values, state=state).weights
    assert (fresh - covered).abs().max() > 1e-3


def test_coverage_penalty_counts_attention_paid_twice():
    once = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    twice = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    half = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    real = torch.ones(1, 2)
    assert coverage_penalty(once, real) == 0
    assert coverage_penalty(twice, real) == 1
    assert coverage_penalty(half, real) == 1
    assert coverage_penalty(twice, torch.tensor([[1.0, 0.0]])) == 0  # padding steps are not counted


# ------------------------------------------------------------------ tiny tasks

# No bridge: the source reaches the decoder through the attention alone.
RNN = dict(arch="gru", embed_dim=16, hidden_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0, bridge=False)
VOCAB = 12
TASKS = {
    # name: (model settings, steps, reverse?)
    "hard-reinforce-reverse": (dict(RNN, attention="hard", hard_attention="reinforce", local_score="general"), 400, True),
    "hard-exact-reverse": (dict(RNN, attention="hard", hard_attention="exact", local_score="general"), 300, True),
    "monotonic-copy": (dict(RNN, attention="monotonic", local_score="general", bidirectional=False), 400, False),
}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", list(TASKS))
def test_learns_the_task(name):
    settings, steps, reverse = TASKS[name]
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(**settings))
    model = build_model(cfg.model, VOCAB, VOCAB)
    train_tiny(model, steps, VOCAB, batch_size=64, lr=1e-2, seed=1, reverse=reverse, objective=cfg)
    held_out = make_reverse_batch(500, VOCAB, 3, 8, torch.Generator().manual_seed(1234), reverse=reverse)
    assert token_accuracy(model, *held_out) >= 0.95
