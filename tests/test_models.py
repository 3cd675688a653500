"""nn.Linear / nn.Embedding / nn.LuongAttention against torch, the models' gradients,
checkpoints, data helpers."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import data, diagnostics, nn, optim, sentences
from rnnkern.models import (
    BagOfWords,
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

def _central_differences(a: np.ndarray, loss: Callable[[], float], rng: np.random.Generator,
                         count: int) -> list[tuple[tuple[Any, ...], float]]:
    """(index, d loss / d a[index]) by central differences at ``count`` random entries of a."""
    eps = 1e-6
    out = []
    for flat in rng.choice(a.size, size=min(count, a.size), replace=False):
        i = np.unravel_index(flat, a.shape)
        old = a[i]
        a.flags.writeable = True  # the recurrent layers' parameters are read-only (packed)
        a[i] = old + eps
        up = loss()
        a.flags.writeable = True  # (the call made it read-only again)
        a[i] = old - eps
        down = loss()
        a.flags.writeable = True
        a[i] = old
        out.append((i, (up - down) / (2 * eps)))
    return out


def _fd_check(model: Model, loss_and_backward: Callable[[], float], loss: Callable[[], float],
              rng: np.random.Generator, per_param: int = 4) -> None:
    """Compare grads with central differences of loss() on a few entries of every parameter."""
    model.zero_grad()
    loss_and_backward()
    for name, p in model.params.items():
        for i, numeric in _central_differences(p, loss, rng, per_param):
            np.testing.assert_allclose(model.grads[name][i], numeric, rtol=1e-5, atol=1e-8,
                                       err_msg=f"{name}{i}")


CELLS_AND_LAYER_NORM = [("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)]


@pytest.mark.parametrize("cell, layer_norm", CELLS_AND_LAYER_NORM)
def test_charlm_gradients(cell: str, layer_norm: bool) -> None:
    rng = np.random.default_rng(0)
    model = CharLM(11, hidden_size=6, num_layers=2, cell=cell, embed_dim=5, dtype="float64",
                   seed=3, layer_norm=layer_norm)
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

@pytest.mark.parametrize("cell, layer_norm", CELLS_AND_LAYER_NORM)
def test_checkpoint_round_trip(tmp_path: Path, cell: str, layer_norm: bool) -> None:
    model = CharLM(13, hidden_size=8, num_layers=2, cell=cell, embed_dim=4, seed=1,
                   layer_norm=layer_norm)
    for p in model.params.values():  # not the init the config would reproduce
        p.flags.writeable = True  # the recurrent layers' parameters are read-only until then
        p += 0.5
    path = tmp_path / "m.ckpt.npz"
    save_checkpoint(path, model, vocab="abc\n\t\"x", step=7)
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, CharLM) and loaded.config == model.config
    assert loaded.config.get("layer_norm", False) == layer_norm
    assert getattr(loaded.rnn, "layer_norm", False) == layer_norm
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


def _write_text(path: Path) -> None:
    path.write_text("just some notes\n")


def _write_pickle(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"weights": [1, 2, 3]}, f)


def _write_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def _write_other_npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(2), b=np.ones(3))


def _write_pickled_header(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, header=np.array([{"format": "x"}], dtype=object))


def _write_json_list_header(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, header=np.array("[1, 2]"))


def _write_truncated(path: Path) -> None:
    CharLM(5, hidden_size=4, embed_dim=2).save(path)
    path.write_bytes(path.read_bytes()[:300])


NOT_CHECKPOINTS = {
    "text": _write_text, "pickle": _write_pickle, "npy": _write_npy, "empty": Path.touch,
    "other npz": _write_other_npz, "pickled header": _write_pickled_header,
    "json list header": _write_json_list_header, "truncated": _write_truncated,
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_load_checkpoint_of_another_file_says_so(tmp_path: Path, kind: str) -> None:
    """Text, a pickle, an .npy, an .npz of other arrays or a damaged file: a ValueError saying it
    is not an rnnkern checkpoint, never numpy's allow_pickle advice (nothing is unpickled)."""
    path = tmp_path / "file.npz"
    NOT_CHECKPOINTS[kind](path)
    with pytest.raises(ValueError, match=r"^path: '.*file\.npz' is not an rnnkern checkpoint \(")\
            as info:
        load_checkpoint(path)
    assert "pickle" not in str(info.value)


def test_load_checkpoint_with_parameters_that_do_not_fit(tmp_path: Path) -> None:
    """A checkpoint whose arrays do not fit its config names the file and the parameter."""
    path = tmp_path / "m.npz"
    CharLM(5, hidden_size=4, embed_dim=2).save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["param/rnn.weight_hh_l0"] = np.zeros((16, 3), np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"^path: '.*m\.npz' is a damaged CharLM checkpoint: "
                                         r"rnn\.weight_hh_l0: expected shape"):
        load_checkpoint(path)
    del arrays["param/rnn.weight_hh_l0"]
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"damaged CharLM checkpoint: load_state_dict: missing"):
        load_checkpoint(path)


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


def test_charlm_layer_norm() -> None:
    """layer_norm=True builds `nn.LSTM(..., layer_norm=True)` (its gains and shifts are model
    parameters, trained by the optimizer); other cells refuse it; a plain model is unchanged."""
    model = CharLM(13, hidden_size=8, num_layers=2, embed_dim=4, seed=0, layer_norm=True)
    assert isinstance(model.rnn, nn.LSTM) and model.rnn.layer_norm
    assert model.config["layer_norm"] is True
    for k in range(2):
        np.testing.assert_array_equal(model.params[f"rnn.ln_gates_l{k}"], np.ones((2, 32)))
        np.testing.assert_array_equal(model.params[f"rnn.ln_cell_l{k}"], [[1] * 8, [0] * 8])
    plain = CharLM(13, hidden_size=8, num_layers=2, embed_dim=4, seed=0)
    assert "layer_norm" not in plain.config and not plain.rnn.layer_norm
    assert set(model.params) - set(plain.params) == {
        "rnn.ln_gates_l0", "rnn.ln_cell_l0", "rnn.ln_gates_l1", "rnn.ln_cell_l1"}
    ids = np.arange(26).reshape(13, 2) % 13  # (T, B)
    assert not np.allclose(model.forward(ids)[0], plain.forward(ids)[0])

    cols = data.batchify(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] * 12), 4)  # (39, 4)
    opt = optim.Adam(model.params, model.grads, lr=3e-2)
    before = {k: v.copy() for k, v in model.params.items() if ".ln_" in k}
    first = model.evaluate(cols, seq_len=12)
    for _ in range(8):  # 24 steps: 2.60 -> 1.12 nats
        for x, y in data.bptt_batches(cols, 12):
            model.zero_grad()
            model.loss_and_backward(x, y)
            opt.step()
    assert model.evaluate(cols, seq_len=12) < 0.5 * first
    assert all(not np.array_equal(model.params[k], v) for k, v in before.items())

    for cell in ("gru", "rnn"):
        with pytest.raises(ValueError, match=rf"^layer_norm: only cell='lstm' .* cell='{cell}'"):
            CharLM(13, cell=cell, layer_norm=True)
    with pytest.raises(TypeError, match="^layer_norm: expected a bool"):
        CharLM(13, layer_norm="yes")  # type: ignore[arg-type]


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


# -- attention -----------------------------------------------------------------------------------

def _torch_luong(att: nn.LuongAttention, query: np.ndarray, values: np.ndarray,
                 mask: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The same equations in PyTorch: (out (T, B, H), weights (B, T, S), leaf tensors)."""
    p = {k: torch.tensor(v, requires_grad=True) for k, v in att.params.items()}
    q = torch.tensor(query, requires_grad=True)
    v = torch.tensor(values, requires_grad=True)
    scores = torch.einsum("tbh,sbh->bts", q, v @ p["weight_a"].T)
    scores = scores.masked_fill(~torch.tensor(mask).T[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    context = torch.einsum("bts,sbh->tbh", weights, v)
    out = torch.tanh(torch.cat([context, q], dim=-1) @ p["weight_c"].T + p["bias_c"])
    return out, weights, q, v, p["weight_a"], p["weight_c"], p["bias_c"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_luong_attention_matches_torch(dtype: type) -> None:
    rng = np.random.default_rng(0)
    steps, src_steps, batch, hid = 4, 6, 3, 5
    att = nn.LuongAttention(hid, dtype=dtype, seed=1)
    query = rng.standard_normal((steps, batch, hid)).astype(dtype)
    values = rng.standard_normal((src_steps, batch, hid)).astype(dtype)
    mask = np.arange(src_steps)[:, None] < np.array([6, 2, 4])[None, :]  # (S, B)
    dout = rng.standard_normal((steps, batch, hid)).astype(dtype)
    out, weights = att(query, values, mask)
    dq, dv = att.backward(dout)
    t_out, t_weights, *leaves = _torch_luong(att, query, values, mask)
    (t_out * torch.tensor(dout)).sum().backward()
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(out, t_out.detach().numpy(), **tol)
    np.testing.assert_allclose(weights, t_weights.detach().numpy(), **tol)
    assert (weights[1, :, 2:] == 0).all()  # padded source steps get no weight
    np.testing.assert_allclose(weights.sum(axis=2), 1.0, rtol=1e-6)
    for ours, leaf in zip([dq, dv, att.grads["weight_a"], att.grads["weight_c"],
                           att.grads["bias_c"]], leaves):
        assert leaf.grad is not None
        np.testing.assert_allclose(ours, leaf.grad.numpy(), **tol)


def test_luong_attention_finite_differences_and_errors() -> None:
    rng = np.random.default_rng(3)
    att = nn.LuongAttention(4, dtype=np.float64, seed=0)
    query = rng.standard_normal((3, 2, 4))
    values = rng.standard_normal((5, 2, 4))
    mask = np.arange(5)[:, None] < np.array([5, 3])[None, :]
    dout = rng.standard_normal((3, 2, 4))

    def loss() -> float:
        return float((att(query, values, mask, training=False)[0] * dout).sum())

    att.zero_grad()
    att(query, values, mask)
    dq, dv = att.backward(dout)
    for arr, grad in [(query, dq), (values, dv)] + [(p, att.grads[k])
                                                    for k, p in att.params.items()]:
        for i, numeric in _central_differences(arr, loss, rng, 6):
            assert grad[i] == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match=r"^values: expected shape \(S, B, H\)"):
        att(query, values[:, :1])
    with pytest.raises(ValueError, match="^mask:"):
        att(query, values, mask[:4])
    with pytest.raises(ValueError, match="^mask: every sequence"):
        att(query, values, np.zeros((5, 2), bool))
    with pytest.raises(TypeError, match="^query: dtype"):
        att(query.astype(np.float32), values)
    att(query, values, mask)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(T, B, H\)"):
        att.backward(dout[:2])
    with pytest.raises(RuntimeError, match="^backward: no saved forward"):
        nn.LuongAttention(4).backward(dout)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_seq2seq_attention_gradients(cell: str) -> None:
    rng = np.random.default_rng(4)
    model = Seq2Seq(9, 8, hidden_size=5, num_layers=2, cell=cell, embed_dim=4, dtype="float64",
                    seed=0, attention="luong")
    assert "attention.weight_a" in model.params
    src = [[3, 4, 5, 6], [7], [8, 3]]
    tgt = [[5], [3, 4, 7, 6, 5], [4, 4]]
    _fd_check(model, lambda: model.loss_and_backward(src, tgt), lambda: model.loss(src, tgt), rng)


def test_seq2seq_attention_decoding_and_weights() -> None:
    model = Seq2Seq(9, 6, hidden_size=8, cell="lstm", dtype="float64", seed=5, attention="luong")
    src = [[3, 4, 5], [6, 7, 8, 3, 4], [8]]
    greedy = model.greedy(src, max_len=5)
    assert model.beam_search(src, beam_size=1, max_len=5) == greedy
    # a sequence decodes the same alone as in a padded batch
    assert model.greedy(src[1:2], max_len=5)[0] == greedy[1]
    # the batch loss is the token-weighted mean of the sequences' own (3 and 6 target tokens)
    alone, other = model.loss(src[:1], [[3, 4]]), model.loss(src[1:2], [[3, 3, 3, 3, 3]])
    assert model.loss(src[:2], [[3, 4], [3, 3, 3, 3, 3]]) == pytest.approx(
        (3 * alone + 6 * other) / 9, rel=1e-12)
    tgt = [g or [3] for g in greedy]
    weights = model.attention_weights(src, tgt)
    for w, s, t in zip(weights, src, tgt):
        assert w.shape == (len(t) + 1, len(s))
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="^attention_weights:"):
        Seq2Seq(9, 6, hidden_size=4).attention_weights(src, tgt)
    with pytest.raises(ValueError, match="^attention:"):
        Seq2Seq(9, 6, attention="bahdanau")


def test_seq2seq_attention_checkpoints(tmp_path: Path) -> None:
    """With attention the config and the parameters round-trip; a checkpoint saved without it
    (no "attention" key in its config, as every earlier checkpoint) loads as before."""
    model = Seq2Seq(9, 8, hidden_size=6, seed=0, attention="luong")
    model.save(tmp_path / "a.npz")
    loaded, _ = load_checkpoint(tmp_path / "a.npz")
    assert isinstance(loaded, Seq2Seq) and loaded.config == model.config
    assert loaded.greedy([[3, 4, 5]]) == model.greedy([[3, 4, 5]])
    plain = Seq2Seq(9, 8, hidden_size=6, seed=0)
    assert "attention" not in plain.config and plain.attention is None
    assert not any(k.startswith("attention.") for k in plain.params)
    plain.save(tmp_path / "p.npz")
    old, _ = load_checkpoint(tmp_path / "p.npz")
    assert isinstance(old, Seq2Seq) and old.attention is None
    assert old.greedy([[3, 4]]) == plain.greedy([[3, 4]])


# -- classifiers with lengths, bag of words --------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "rnn", "bag"])
def test_classifiers_with_lengths(kind: str) -> None:
    """A padded batch with lengths gives each sequence its own logits; gradients check out."""
    rng = np.random.default_rng(5)
    if kind == "bag":
        model: Any = BagOfWords(7, 2, embed_dim=4, dtype="float64", seed=0)
    else:
        model = SequenceClassifier(7, 2, hidden_size=4, cell=kind, embed_dim=3, dtype="float64",
                                   seed=0)
    ids = rng.integers(1, 7, size=(6, 3))
    lengths = np.array([6, 2, 4])
    logits, _ = model.forward(ids, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = model.forward(ids[:n, b:b + 1])
        np.testing.assert_allclose(logits[b], alone[0], rtol=1e-12)
    labels = np.array([0, 1, 1])

    def loss() -> float:
        out, _ = model.forward(ids, lengths=lengths)
        return float(rnnkern.softmax_cross_entropy(out, labels).loss)

    _fd_check(model, lambda: model.loss_and_backward(ids, labels, lengths)[0], loss, rng)
    assert 0.0 <= model.accuracy(ids, labels, lengths) <= 1.0


def test_bag_of_words_is_blind_to_order() -> None:
    """The same logits, to the bit, for every order of the same words (lengths too)."""
    model = BagOfWords(20, 2, embed_dim=8, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=(9, 4))
    lengths = np.array([9, 3, 7, 1])
    logits, _ = model.forward(ids, lengths=lengths)
    jumbled = ids.copy()
    for b, n in enumerate(lengths):
        jumbled[:n, b] = rng.permutation(ids[:n, b])
    assert not np.array_equal(jumbled, ids)
    again, _ = model.forward(jumbled, lengths=lengths)
    np.testing.assert_array_equal(logits, again)
    reversed_all, _ = model.forward(ids[::-1])
    np.testing.assert_array_equal(model.forward(ids)[0], reversed_all)


def test_grammar() -> None:
    grammar = sentences.Grammar()
    rng = np.random.default_rng(0)
    drawn = [grammar.sample(rng) for _ in range(2000)]
    assert all(grammar.is_sentence(s) for s in drawn)
    assert len({tuple(s) for s in drawn}) > 1500  # mostly distinct
    assert all(w in grammar.words for s in drawn for w in s)
    for written, jumbled in zip(data.LECTURE_WRITTEN, data.LECTURE_JUMBLED):
        assert grammar.is_sentence(data.tokenize_sentence(written)), written
        assert not grammar.is_sentence(data.tokenize_sentence(jumbled)), jumbled
    for words in ("the key found the farmer", "the red farmer found the old key",
                  "the old farmer found the red key the", "found the old farmer the red key"):
        assert not grammar.is_sentence(words.split()), words
    assert grammar.is_sentence("the old farmer found the red key".split())
    assert grammar.is_sentence("the farmer slept".split())  # optional slots left out
    with pytest.raises(ValueError, match="^frames: unknown category 'COLOUR'"):
        sentences.Grammar(frames=[(1.0, "the COLOUR key")])


def test_jumbled_sentences() -> None:
    task = data.JumbledSentences(test_size=600)
    assert task.test == data.JumbledSentences(test_size=600).test  # the same every run
    tests = {tuple(s) for s in task.test}
    assert len(tests) == 600  # distinct
    assert [" ".join(s) for s in task.test[:5]] == [
        " ".join(data.tokenize_sentence(t)) for t in data.LECTURE_WRITTEN]
    assert all(task.held_out(s) and task.grammar.is_sentence(s) for s in task.test)
    rng = np.random.default_rng(0)
    train = [tuple(task.sentence(rng)) for _ in range(3000)]
    assert not set(train) & tests  # never a held-out sentence in training
    ids, kinds, words = task.pairs(rng, task.test)
    assert kinds[:600].tolist() == [0] * 600 and (kinds[600:] > 0).all()
    assert 0.4 < (kinds[600:] == 1).mean() < 0.6
    for x, kind, w, s in zip(ids[600:], kinds[600:], words[600:], task.test):
        assert sorted(w) == sorted(s) and w != s  # the same words, in another order
        np.testing.assert_array_equal(task.encode(w), x)
        assert not task.grammar.is_sentence(w)  # a jumble is never a sentence
        if kind == 2:
            assert sum(a != b for a, b in zip(w, s)) == 2
    np.testing.assert_array_equal(np.concatenate(ids[:600]),
                                  np.concatenate([task.encode(s) for s in task.test]))
    swapped = [data.jumble_order(np.arange(8), rng, swap=True) for _ in range(20)]
    assert all((order != np.arange(8)).sum() == 2 for order in swapped)
    batch_ids, labels = task.batch(rng, 51)  # 25 sentences, each as written and jumbled
    assert labels.tolist() == [0] * 25 + [1] * 25
    for written, jumbled in zip(batch_ids[:25], batch_ids[25:]):
        assert sorted(written.tolist()) == sorted(jumbled.tolist())
        assert not np.array_equal(written, jumbled)
    assert task.encode(["honesty", "zebra"]).tolist() == [task.vocab.index["honesty"], task.UNK]
    with pytest.raises(ValueError, match="^ids:"):
        data.jumble_order(np.array([3, 3, 3]), rng)
    with pytest.raises(ValueError, match="^test_size:"):
        data.JumbledSentences(test_size=4)
    with pytest.raises(ValueError, match="^shuffle_prob:"):
        data.JumbledSentences(shuffle_prob=1.5)
    assert data.tokenize_sentence("POLICY IS THE BEST, DON'T.") == [
        "policy", "is", "the", "best", ",", "don't"]


def test_bag_of_words_at_chance_on_pairs() -> None:
    """Every sentence shown as written and jumbled: a bag of words, trained or not, gets
    exactly half right (the same p(jumbled) for both)."""
    task = data.JumbledSentences(test_size=50)
    ids, kinds, _ = task.pairs(np.random.default_rng(1), task.test)
    model = BagOfWords(len(task.vocab), 2, embed_dim=6, seed=3)
    x, lengths = data.pad_sequences(ids, task.PAD)
    logits, _ = model.forward(x, lengths=lengths)
    np.testing.assert_array_equal(logits[:50], logits[50:])
    assert model.accuracy(x, (kinds > 0).astype(np.int64), lengths) == 0.5


def test_reversal_task() -> None:
    task = data.Reversal(30, 34, letters=6)
    rng = np.random.default_rng(0)
    src, tgt = task.sample(rng, 200, "train")
    test_src, _ = task.sample(rng, 50, "test")
    assert all(30 <= len(s) <= 34 for s in src + test_src)
    for s, t in zip(src, tgt):
        assert task.tgt_vocab.decode(t) == " ".join(reversed(task.src_vocab.decode(s).split()))
    assert not {tuple(s) for s in src} & {tuple(s) for s in test_src}
    assert all(task.held_out(s - 1) for s in test_src)
    with pytest.raises(ValueError, match="^letters:"):
        data.Reversal(letters=30)


def test_train_reversal() -> None:
    """The attention task's trainer: the model asked for, the steps asked for, a report each."""
    task = data.Reversal(4, 6, letters=5)
    seen: list[tuple[int, float]] = []
    model, steps = data.train_reversal(task, "luong", hidden_size=6, embed_dim=4, batch=3,
                                       steps=4, on_step=lambda m, k, loss: seen.append((k, loss)))
    assert isinstance(model, Seq2Seq) and model.attention is not None and steps == 4
    assert [k for k, _ in seen] == [1, 2, 3, 4] and all(loss > 0 for _, loss in seen)
    plain, steps = data.train_reversal(task, hidden_size=6, embed_dim=4, steps=10,
                                       progress=lambda k: k / 2)
    assert plain.attention is None and steps == 2  # whichever is further along
    assert len(plain.src_embed.params["weight"]) == len(task.src_vocab)
    with pytest.raises(ValueError, match="^steps, progress:"):
        data.train_reversal(task)
