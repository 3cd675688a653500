"""nn.Linear / nn.Embedding against torch, the models' gradients, checkpoints, data helpers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import data, diagnostics, nn, optim
from rnnkern.models import (
    CharLM,
    Model,
    Seq2Seq,
    SequenceClassifier,
    load_checkpoint,
    save_checkpoint,
)

# -- Linear and Embedding ------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (3, 4), (2, 1, 3)])
def test_linear_matches_torch(bias: bool, lead: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    ours = nn.Linear(6, 4, bias=bias, dtype=np.float64, seed=1)
    theirs = torch.nn.Linear(6, 4, bias=bias, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x = rng.standard_normal((*lead, 6))
    dy = rng.standard_normal((*lead, 4))
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.backward(torch.tensor(dy))
    y = ours(x)
    dx = ours.backward(dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert tx.grad is not None
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    for name, p in theirs.named_parameters():
        assert p.grad is not None
        np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


def test_linear_init_like_torch() -> None:
    """PyTorch's init: weight and bias uniform in +-1/sqrt(in_features)."""
    lin = nn.Linear(400, 300, seed=0)
    bound = 1 / np.sqrt(400)
    for p in lin.params.values():
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.99 * bound
    assert np.std(lin.params["weight"]) == pytest.approx(bound / np.sqrt(3), rel=0.02)
    again = nn.Linear(400, 300, seed=0)
    np.testing.assert_array_equal(lin.params["weight"], again.params["weight"])


def test_embedding_matches_torch() -> None:
    rng = np.random.default_rng(0)
    ours = nn.Embedding(7, 3, dtype=np.float64, seed=0, padding_idx=2)
    theirs = torch.nn.Embedding(7, 3, padding_idx=2, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    idx = np.array([[0, 2, 2], [6, 0, 5]])
    dy = rng.standard_normal((2, 3, 3))
    ty = theirs(torch.tensor(idx))
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(ours(idx), ty.detach().numpy())
    ours.backward(dy)
    assert theirs.weight.grad is not None
    np.testing.assert_allclose(ours.grads["weight"], theirs.weight.grad.numpy(), rtol=1e-12)
    assert not ours.grads["weight"][2].any()


def test_embedding_init_and_padding() -> None:
    emb = nn.Embedding(1000, 50, seed=0, padding_idx=-1)
    assert emb.padding_idx == 999
    w = emb.params["weight"]
    assert not w[999].any()
    assert w[:999].std() == pytest.approx(1.0, rel=0.02)


def test_layer_errors() -> None:
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="^x:"):
        lin(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="^x:.*dtype"):
        lin(np.zeros((4, 3), np.float64))
    with pytest.raises(RuntimeError, match="^backward:"):
        nn.Linear(3, 2).backward(np.zeros((1, 2), np.float32))
    with pytest.raises(TypeError, match="^dtype:"):
        nn.Linear(3, 2, dtype=np.int32)
    with pytest.raises(KeyError, match="bias"):
        lin.load_state_dict({"weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="^weight:"):
        lin.load_state_dict({"weight": np.zeros((3, 3)), "bias": np.zeros(2)})
    emb = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match="^indices:"):
        emb(np.array([4]))
    with pytest.raises(TypeError, match="^indices:.*dtype"):
        emb(np.array([1.0]))
    with pytest.raises(ValueError, match="^padding_idx:"):
        nn.Embedding(4, 2, padding_idx=4)


# -- gradients of whole models by finite differences ----------------------------------------------

def at(p: np.ndarray, i: Any, value: float, loss: Callable[[], float]) -> float:
    """loss() with p[i] = value; the layers' parameters are read-only until made writeable."""
    p.flags.writeable = True
    p[i] = value
    return loss()


def _fd_check(model: Model, loss_and_backward: Callable[[], float], loss: Callable[[], float],
              rng: np.random.Generator, per_param: int = 4) -> None:
    """Compare grads with central differences of loss() on a few entries of every parameter."""
    model.zero_grad()
    loss_and_backward()
    eps = 1e-6
    for name, p in model.params.items():
        g = model.grads[name]
        for flat in rng.choice(p.size, size=min(per_param, p.size), replace=False):
            i = np.unravel_index(flat, p.shape)
            old = p[i]
            up, down = at(p, i, old + eps, loss), at(p, i, old - eps, loss)
            p.flags.writeable = True
            p[i] = old
            np.testing.assert_allclose(g[i], (up - down) / (2 * eps), rtol=1e-5, atol=1e-8,
                                       err_msg=f"{name}{i}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_charlm_gradients(cell: str) -> None:
    rng = np.random.default_rng(0)
    model = CharLM(11, hidden_size=6, num_layers=2, cell=cell, embed_dim=5, dtype="float64",
                   seed=3)
    ids = rng.integers(0, 11, size=(7, 3))
    _, state = model.forward(ids[:3])  # a carried state: no gradient flows into it
    x, y = ids[3:-1], ids[4:]

    def loss() -> float:
        logits, _ = model.forward(x, state)
        return float(rnnkern.softmax_cross_entropy(logits.reshape(-1, 11), y.reshape(-1)).loss)

    _fd_check(model, lambda: model.loss_and_backward(x, y, state)[0], loss, rng)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seq2seq_gradients(cell: str) -> None:
    rng = np.random.default_rng(1)
    model = Seq2Seq(9, 8, hidden_size=5, num_layers=2, cell=cell, embed_dim=4, dtype="float64",
                    seed=0)
    src = [[3, 4, 5, 6], [7], [8, 3]]
    tgt = [[5], [3, 4, 7, 6, 5], [4, 4]]
    _fd_check(model, lambda: model.loss_and_backward(src, tgt), lambda: model.loss(src, tgt), rng)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_classifier_gradients_and_gate_biases(cell: str) -> None:
    rng = np.random.default_rng(2)
    bias = {"forget_bias": 5.0, "input_bias": -3.0} if cell == "lstm" else {}
    model = SequenceClassifier(6, 3, hidden_size=4, num_layers=2, cell=cell, embed_dim=3,
                               dtype="float64", seed=0, **bias)
    plain = SequenceClassifier(6, 3, hidden_size=4, num_layers=2, cell=cell, embed_dim=3,
                               dtype="float64", seed=0)
    for k, p in model.params.items():  # the gate biases shift exactly the i and f blocks
        shift = np.zeros_like(p)
        if cell == "lstm" and k.startswith("rnn.bias_hh"):
            shift[:4], shift[4:8] = -3.0, 5.0
        np.testing.assert_array_equal(p, plain.params[k] + shift)
    ids = rng.integers(0, 6, size=(5, 4))
    labels = rng.integers(0, 3, size=4)

    def loss() -> float:
        logits, _ = model.forward(ids)
        return float(rnnkern.softmax_cross_entropy(logits, labels).loss)

    _fd_check(model, lambda: model.loss_and_backward(ids, labels)[0], loss, rng)
    with pytest.raises(ValueError, match="^forget_bias:"):
        SequenceClassifier(6, 3, cell="gru", forget_bias=1.0)


def test_seq2seq_padding_does_not_change_results() -> None:
    """A sequence's loss and decoding do not depend on the other sequences of its batch."""
    model = Seq2Seq(9, 8, hidden_size=6, cell="lstm", dtype="float64", seed=2)
    src, tgt = [[3, 4, 5, 6, 7, 8]], [[3, 4]]
    alone = model.loss(src, tgt)
    padded_batch = model.loss(src + [[5]], tgt + [[3, 3, 3, 3, 3, 3, 3]])
    other = model.loss([[5]], [[3, 3, 3, 3, 3, 3, 3]])
    # the batch loss is the token-weighted mean of the two sequences' losses (3 and 8 tokens)
    assert padded_batch == pytest.approx((3 * alone + 8 * other) / 11, rel=1e-12)
    assert model.greedy(src + [[5]], max_len=6)[0] == model.greedy(src, max_len=6)[0]


def test_beam_search_finds_best_and_width_one_is_greedy() -> None:
    model = Seq2Seq(9, 6, hidden_size=8, cell="gru", dtype="float64", seed=5)
    src = [[3, 4, 5], [6, 7], [8]]
    greedy = model.greedy(src, max_len=5)
    assert model.beam_search(src, beam_size=1, max_len=5) == greedy
    wide = model.beam_search(src, beam_size=6, max_len=5)
    def logp(s: list[int], seq: list[int]) -> float:  # log p(seq + eos | s), teacher forced
        return -model.loss([s], [seq]) * (len(seq) + 1)

    for s, g, w in zip(src, greedy, wide):
        if len(g) < 5:  # a finished greedy hypothesis: the beam finds one at least as likely
            assert logp(s, w) >= logp(s, g) - 1e-9


def test_trains_with_optimizer_and_clipping() -> None:
    """One optimizer over a model's params; the loss of a fixed batch drops."""
    model = Seq2Seq(9, 8, hidden_size=16, cell="lstm", seed=0)
    opt = optim.Adam(model.params, model.grads, lr=0.02)
    src, tgt = [[3, 4, 5], [6, 7]], [[3, 4, 5], [7]]
    first = model.loss(src, tgt)
    for _ in range(30):
        model.zero_grad()
        model.loss_and_backward(src, tgt)
        optim.clip_grad_norm(model.grads, 1.0)
        opt.step()
    assert model.loss(src, tgt) < 0.2 * first
    assert model.greedy(src) == tgt


# -- checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_checkpoint_round_trip(tmp_path: Path, cell: str) -> None:
    model = CharLM(13, hidden_size=8, num_layers=2, cell=cell, embed_dim=4, seed=1)
    for p in model.params.values():  # not the init the config would reproduce
        p.flags.writeable = True  # the recurrent layers' parameters are read-only until then
        p += 0.5
    path = tmp_path / "m.ckpt.npz"
    save_checkpoint(path, model, vocab="abc\n\t\"x", step=7)
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, CharLM) and loaded.config == model.config
    assert meta == {"vocab": "abc\n\t\"x", "step": 7}
    assert loaded.params.keys() == model.params.keys()
    for k, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], p)
        assert loaded.params[k].dtype == p.dtype
    ids = np.arange(13)[:, None] % 13
    np.testing.assert_array_equal(loaded.forward(ids)[0], model.forward(ids)[0])


def test_checkpoint_seq2seq_and_errors(tmp_path: Path) -> None:
    model = Seq2Seq(9, 8, hidden_size=6, seed=0)
    model.save(tmp_path / "s.npz")
    loaded, _ = load_checkpoint(tmp_path / "s.npz")
    assert isinstance(loaded, Seq2Seq)
    assert loaded.greedy([[3, 4]]) == model.greedy([[3, 4]])
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="^path:"):
        load_checkpoint(tmp_path / "other.npz")


def test_model_state_dict_keys_and_errors() -> None:
    model = CharLM(5, hidden_size=4, embed_dim=3)
    keys = set(model.state_dict())
    assert {"embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
            "rnn.bias_hh_l0", "head.weight", "head.bias"} == keys
    sd = model.state_dict()
    sd["head.weight"] = np.zeros((4, 4))
    before = model.state_dict()
    with pytest.raises(ValueError, match="^head.weight:"):
        model.load_state_dict(sd)
    for k, v in model.state_dict().items():  # nothing loaded
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(KeyError, match="embed.weight"):
        model.load_state_dict({k: v for k, v in before.items() if k != "embed.weight"})
    with pytest.raises(ValueError, match="^cell:"):
        CharLM(5, cell="transformer")


def test_charlm_evaluate_and_sample() -> None:
    model = CharLM(6, hidden_size=8, embed_dim=4, seed=0)
    cols = data.batchify(np.arange(60) % 6, 3)
    assert 0 < model.evaluate(cols, seq_len=7) < 3 * np.log(6)
    a = model.sample(10, np.array([1, 2]), temperature=0.8, rng=np.random.default_rng(0))
    b = model.sample(10, np.array([1, 2]), temperature=0.8, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10,) and a.min() >= 0 and a.max() < 6
    greedy = model.sample(5, np.array([1]), temperature=0.0)
    logits, _ = model.forward(np.array([[1]]))
    assert greedy[0] == logits[0, 0].argmax()


# -- diagnostics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [
    nn.RNN(3, 5, dtype=np.float64, seed=0),
    nn.LSTM(3, 5, num_layers=2, dtype=np.float64, seed=0),
    nn.GRU(3, 5, batch_first=True, dtype=np.float64, seed=0),
], ids=repr)
def test_gradient_flow_matches_suffix_backward(layer: Any) -> None:
    """dL_T/dh_t from the chained per-step backward equals a backward over the suffix from t."""
    rng = np.random.default_rng(0)
    steps = 6
    x = rng.standard_normal((2, steps, 3) if layer.batch_first else (steps, 2, 3))
    grads_before = {k: g.copy() for k, g in layer.grads.items()}
    norms = diagnostics.gradient_flow(layer, x)
    assert norms.shape == (steps + 1,)
    for k, g in layer.grads.items():  # no side effect on the layer's gradients
        np.testing.assert_array_equal(g, grads_before[k])
    dy_last = np.ones((2, 5))
    state = None
    for t in range(steps + 1):
        xs = x[:, t:] if layer.batch_first else x[t:]
        if t < steps:
            y, _ = layer(xs, state)
            dy = np.zeros_like(y)
            if layer.batch_first:
                dy[:, -1] = dy_last
            else:
                dy[-1] = dy_last
            _, dstate = layer.backward(dy)
            dh = dstate[0] if isinstance(dstate, tuple) else dstate
            assert norms[t] == pytest.approx(np.linalg.norm(dh[-1]), rel=1e-10)
            step = x[:, t:t + 1] if layer.batch_first else x[t:t + 1]
            _, state = layer(step, state, training=False)
        else:
            assert norms[t] == pytest.approx(np.linalg.norm(dy_last), rel=1e-10)
    layer.zero_grad()


def test_data_helpers() -> None:
    text = data.default_corpus(max_chars=5000)
    assert len(text) == 5000 and text.isascii()
    assert data.default_corpus(max_chars=5000) == text
    vocab = data.Vocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    with pytest.raises(ValueError, match="^prime:"):
        vocab.encode("\u00e9", name="prime")
    cols = data.batchify(np.arange(23), 3)
    assert cols.shape == (7, 3)
    chunks = list(data.bptt_batches(cols, 4))
    assert [x.shape[0] for x, _ in chunks] == [4, 2]
    for x, y in chunks:
        np.testing.assert_array_equal(y, x + 1)  # targets one ahead, column by column
    assert " ".join(data.number_to_words(312)) == "three hundred and twelve"
    assert " ".join(data.number_to_words(40_019)) == "forty thousand and nineteen"
    assert " ".join(data.number_to_words(999_999)) == (
        "nine hundred and ninety nine thousand nine hundred and ninety nine")
    task = data.NumberWords(9999)
    rng = np.random.default_rng(0)
    _, _, train = task.sample(rng, 500, "train")
    src, tgt, test = task.sample(rng, 100, "test")
    assert not set(train.tolist()) & set(test.tolist())
    assert [task.tgt_vocab.decode(t) for t in tgt] == [str(n) for n in test]
    tokens, labels = data.longrange_batch(rng, 8, 12)
    assert tokens.shape == (12, 8)
    np.testing.assert_array_equal(tokens[0], labels)
    assert tokens[1:].min() >= 2
