"""torch.compile, torch.export and TorchScript with rnnkern.torch's modules (issue 18).

A whole stack (every layer and direction) runs as the registered operator
torch.ops.rnnkern.stack (its backward: rnnkern.stack_backward), so Dynamo traces a converted model
whole. Compiling is slow, so each
configuration is compiled once (a module-scoped fixture) and its results are shared by the
tests; the fullgraph compiles use AOTAutograd without Inductor (forward and backward graphs
recorded and run as traced), one test uses torch.compile's defaults (Inductor). Results are
compared in float64 with the eager drop-in and with torch.nn's own modules on the same weights.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from functorch.compile import make_boxed_func
from rnnkern_testing import assert_close
from torch._dynamo.backends.common import aot_autograd
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern.torch as rt

I, H, T, B = 3, 4, 5, 2
F64 = torch.float64
#: name: (torch class, constructor kwargs, input layout, whether hx is given)
CONFIGS: dict[str, tuple[type[torch.nn.RNNBase], dict[str, Any], str, bool]] = {
    "lstm-bi-batch_first-hx": (torch.nn.LSTM, {"bidirectional": True, "batch_first": True},
                               "batched", True),
    "gru-bi": (torch.nn.GRU, {"bidirectional": True}, "batched", False),
    "rnn_tanh-batch_first-hx": (torch.nn.RNN, {"batch_first": True}, "batched", True),
    "rnn_relu-bi-unbatched": (torch.nn.RNN, {"bidirectional": True, "nonlinearity": "relu"},
                              "unbatched", False),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Model(torch.nn.Module):
    """A recurrent module (2 layers) and a linear layer on its output."""

    def __init__(self, cls: type[torch.nn.RNNBase], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.rnn = cls(I, H, num_layers=2, dtype=F64, **kwargs)
        D = 2 if self.rnn.bidirectional else 1
        self.head = torch.nn.Linear(D * H, 2, dtype=F64)

    def forward(self, x: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, ...]:
        out, state = self.rnn(x, hx)
        return (self.head(out), *(state if isinstance(state, tuple) else (state,)))


def run(fn: Callable[..., tuple[torch.Tensor, ...]], model: torch.nn.Module,
        args: tuple[Any, ...], seed: int = 1) -> dict[str, np.ndarray]:
    """Outputs of fn(*args) and the gradients of a random weighting of them: of every tensor
    argument and every parameter of ``model`` (by name)."""
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    inputs += [t for a in args if isinstance(a, tuple) for t in a]
    for t in inputs:
        t.grad = None
    model.zero_grad()
    outs = fn(*args)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.rand(o.shape, generator=gen, dtype=F64)).sum() for o in outs)
    loss.backward()  # type: ignore[union-attr]
    res = {f"out{i}": o.detach().numpy() for i, o in enumerate(outs)}
    res.update({f"d_arg{i}": np.asarray(t.grad) for i, t in enumerate(inputs)})
    res.update({n: np.asarray(p.grad) for n, p in model.named_parameters()})
    return res


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        assert_close(got[key], w, dtype=np.float64, acc_len=T * (I + 4 * H + B), name=key)


def make_args(cls: type[torch.nn.RNNBase], kwargs: dict[str, Any], layout: str, with_hx: bool,
              steps: int = T, batch: int = B) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(steps * 10 + batch)
    D = 2 if kwargs.get("bidirectional") else 1
    shape = ((steps, I) if layout == "unbatched" else
             (batch, steps, I) if kwargs.get("batch_first") else (steps, batch, I))
    x = torch.rand(shape, generator=gen, dtype=F64, requires_grad=True)
    if not with_hx:
        return (x,)
    sshape = (2 * D, batch) + (H,)
    states = [torch.rand(sshape, generator=gen, dtype=F64, requires_grad=True)
              for _ in range(2 if cls is torch.nn.LSTM else 1)]
    return (x, tuple(states) if cls is torch.nn.LSTM else states[0])


def recording_backend(graphs: list[tuple[str, torch.fx.GraphModule]]) -> Any:
    """AOTAutograd without Inductor, keeping the forward and backward graphs it traced."""
    def compiler(kind: str) -> Any:
        def compile_graph(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
            graphs.append((kind, gm))
            return make_boxed_func(gm.forward)
        return compile_graph
    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


@dataclass
class Case:
    name: str
    native: Model  # torch.nn's module inside
    ours: Model  # the same, converted
    args: tuple[Any, ...]
    want: dict[str, np.ndarray]  # torch.nn, eager
    eager: dict[str, np.ndarray]  # converted, eager
    compiled: dict[str, np.ndarray]  # converted, torch.compile(fullgraph=True)
    graphs: list[tuple[str, torch.fx.GraphModule]]
    compiled_fn: Any


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request: pytest.FixtureRequest) -> Case:
    cls, kwargs, layout, with_hx = CONFIGS[request.param]
    torch._dynamo.reset()
    torch.manual_seed(0)
    native = Model(cls, kwargs)
    ours = rt.convert(copy.deepcopy(native))
    assert isinstance(ours.rnn, (rt.LSTM, rt.GRU, rt.RNN))
    args = make_args(cls, kwargs, layout, with_hx)
    graphs: list[tuple[str, torch.fx.GraphModule]] = []
    compiled_fn = torch.compile(ours, fullgraph=True, backend=recording_backend(graphs))
    return Case(request.param, native, ours, args, run(native, native, args),
                run(ours, ours, args), run(compiled_fn, ours, args), graphs, compiled_fn)


def test_fullgraph_compile_matches_eager_and_torch(case: Case) -> None:
    """Outputs, final states and the gradients of input, state and every parameter."""
    assert_same(case.compiled, case.eager)
    assert_same(case.compiled, case.want)


def test_compiled_graphs_hold_the_operators(case: Case) -> None:
    """One forward graph calling rnnkern.stack once, one backward graph calling
    rnnkern.stack_backward once: the kernels, not a fallback, in both."""
    def calls(gm: torch.fx.GraphModule, op: Any) -> int:
        return sum(1 for n in gm.graph.nodes if n.target is op)

    kinds = [k for k, _ in case.graphs]
    assert kinds == ["forward", "backward"]
    fw, bw = (gm for _, gm in case.graphs)
    assert calls(fw, torch.ops.rnnkern.stack.default) == 1
    assert calls(bw, torch.ops.rnnkern.stack_backward.default) == 1
    assert calls(bw, torch.ops.rnnkern.stack.default) == 0


def test_no_graph_break(case: Case) -> None:
    explanation = torch._dynamo.explain(case.ours)(*case.args)
    assert explanation.graph_break_count == 0
    assert explanation.break_reasons == []
    assert explanation.graph_count == 1


def test_compiled_model_takes_new_shapes(case: Case) -> None:
    """Other T and B: Dynamo recompiles with dynamic sizes (the operators' fake functions)."""
    cls, kwargs, layout, with_hx = CONFIGS[case.name]
    args = make_args(cls, kwargs, layout, with_hx, steps=T + 2, batch=B + 1)
    assert_same(run(case.compiled_fn, case.ours, args), run(case.native, case.native, args))


def test_export_runs_and_matches(case: Case) -> None:
    """torch.export: the program's outputs and gradients are the eager ones."""
    program = torch.export.export(case.ours, case.args)
    exported = program.module()
    targets = [n.target for n in program.graph.nodes]
    assert torch.ops.rnnkern.stack.default in targets
    got = run(exported, exported, case.args)
    assert_same(got, case.eager)


def test_export_without_grad_keeps_no_buffers() -> None:
    """Exported under torch.no_grad(), the operator is told to keep nothing for a backward."""
    torch.manual_seed(0)
    model = rt.convert(Model(torch.nn.GRU, {"bidirectional": True}))
    x = torch.rand(T, B, I, dtype=F64)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        want = model(x)
    stacks = [n for n in program.graph.nodes if n.target is torch.ops.rnnkern.stack.default]
    assert len(stacks) == 1 and stacks[0].args[3] is False  # training=False
    for g, w in zip(program.module()(x), want):
        assert torch.equal(g, w)


# Importing Inductor imports torch.utils.mkldnn, which calls the deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_default_compile_matches_eager() -> None:
    """torch.compile(model) with its defaults (Inductor): outputs and every gradient."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    native = Model(torch.nn.LSTM, {"bidirectional": True, "batch_first": True})
    ours = rt.convert(copy.deepcopy(native))
    args = make_args(torch.nn.LSTM, {"batch_first": True, "bidirectional": True}, "batched",
                     True)
    got = run(torch.compile(ours), ours, args)
    assert_same(got, run(ours, ours, args))
    assert_same(got, run(native, native, args))


class Packed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True,
                                dtype=F64)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h_n


# Dynamo reads .grad of the non-leaf tensors it picks up after a graph break (a UserWarning).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_packed_input_compiles_with_graph_breaks_only() -> None:
    """torch's packing functions are on Dynamo's skip list (for torch.nn.GRU as much as for
    ours): fullgraph=True refuses them, the default compile breaks the graph there and the
    results are the eager ones."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    native = Packed()
    ours = rt.convert(copy.deepcopy(native))
    x = torch.rand(3, T, I, dtype=F64, requires_grad=True)
    lengths = torch.tensor([T, 2, 3])
    with pytest.raises(torch._dynamo.exc.Unsupported, match="pack_padded_sequence"):
        torch.compile(ours, fullgraph=True, backend="aot_eager")(x, lengths)
    torch._dynamo.reset()
    got = run(torch.compile(ours, backend="aot_eager"), ours, (x, lengths))
    assert_same(got, run(ours, ours, (x, lengths)))
    assert_same(got, run(native, native, (x, lengths)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_says_what_to_use_instead() -> None:
    model = rt.convert(torch.nn.Sequential(torch.nn.Linear(I, I), torch.nn.LSTM(I, H)))
    with pytest.raises(RuntimeError, match=re.escape(
            "rnnkern.torch.LSTM does not support TorchScript (torch.jit.script)")) as err:
        torch.jit.script(model)
    assert "torch.compile(model)" in str(err.value)
    assert "torch.export.export(model, args)" in str(err.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace(_method)?` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("make", [lambda: torch.nn.LSTM(I, H), lambda: torch.nn.GRUCell(I, H)],
                         ids=["LSTM", "GRUCell"])
def test_jit_trace_says_what_to_use_instead(make: Any) -> None:
    """torch.jit.trace would record the forward's arrays as constants: it raises instead."""
    model = rt.convert(torch.nn.Sequential(torch.nn.Linear(I, I), make()))
    name = type(model[1]).__name__
    x = torch.randn(5, 2, I) if name == "LSTM" else torch.randn(2, I)
    with pytest.raises(RuntimeError, match=re.escape(
            f"rnnkern.torch.{name} does not support torch.jit.trace")) as err:
        torch.jit.trace(model, (x,))
    assert "torch.compile(model)" in str(err.value)
    model(x)  # not tracing: runs


# ----------------------------------------------------------------------------- the operators

# (cell id of rnnkern._core, G): rnn tanh, lstm, gru, gru with the reset gate before W_hn
OP_CELLS = [(0, 1), (3, 4), (4, 3), (5, 3)]
#: name: (num_layers, bidirectional, lengths, dropout masks)
OP_STACKS = {"one-layer": (1, False, None, False),
             "two-bi-lengths-dropout": (2, True, [4, 1, 3], True)}


def stack_args(cell: int, G: int, num_layers: int, bidirectional: bool,
               lengths: list[int] | None, dropout: bool, training: bool = True,
               steps: int = 4, batch: int = 3, dtype: torch.dtype = F64,
               precision: str = "float", grad: bool = True) -> tuple[Any, ...]:
    """Arguments of torch.ops.rnnkern.stack, random tensors of ``dtype`` (float64 by default)
    that require grad if ``grad``, and ``precision``."""
    gen = torch.Generator().manual_seed(cell)

    def rand(*shape: int, grad: bool = grad) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=dtype, requires_grad=grad)

    D = 2 if bidirectional else 1
    weights = [w for layer in range(num_layers) for _ in range(D)
               for w in (rand(G * H, I if layer == 0 else D * H), rand(G * H, H), rand(G * H),
                         rand(G * H))]
    masks = [rand(steps, batch, D * H, grad=False).round() * 2
             for _ in range(num_layers - 1)] if dropout else []
    return (cell, num_layers, bidirectional, training, rand(steps, batch, I),
            rand(num_layers * D, batch, H), rand(num_layers * D, batch, H) if cell == 3 else None,
            weights, None if lengths is None else torch.tensor(lengths), masks, precision)


def opcheck_operators(args: tuple[Any, ...]) -> None:
    """torch.library.opcheck on rnnkern::stack with ``args`` and, for a training call, on
    rnnkern::stack_backward with its saved results: schema, fake (shape) functions, autograd
    registration and AOTAutograd tracing with dynamic shapes."""
    torch.library.opcheck(torch.ops.rnnkern.stack.default, args)
    cell, num_layers, bidirectional, training, x, _, _, weights, lens, masks, precision = args
    if not training:
        return
    with torch.no_grad():
        y, h_n, _, *saved = torch.ops.rnnkern.stack(*args)
    back = (cell, num_layers, bidirectional, x.detach(), [w.detach() for w in weights], lens,
            masks, saved, torch.rand_like(y), torch.rand_like(h_n),
            torch.rand_like(h_n) if cell == 3 else None, precision)
    torch.library.opcheck(torch.ops.rnnkern.stack_backward.default, back)


@pytest.mark.parametrize("stack", OP_STACKS)
@pytest.mark.parametrize("cell,G", OP_CELLS, ids=["rnn", "lstm", "gru", "gru_rh"])
def test_opcheck(cell: int, G: int, stack: str) -> None:
    """opcheck on both operators, float64."""
    opcheck_operators(stack_args(cell, G, *OP_STACKS[stack]))


@pytest.mark.parametrize("precision", ["bf16", "bf16 weights", "int8"])
@pytest.mark.parametrize("cell,G", OP_CELLS[1:3], ids=["lstm", "gru"])
def test_opcheck_low_precision(cell: int, G: int, precision: str) -> None:
    """opcheck with float32 tensors in bf16 (training: both operators; with bfloat16 weights too,
    as a bf16 module's) and int8 (inference: the forward operator)."""
    training = precision != "int8"
    args = stack_args(cell, G, *OP_STACKS["two-bi-lengths-dropout"], training=training,
                      dtype=torch.float32, precision=precision.split()[0], grad=training)
    if precision == "bf16 weights":
        weights = [w.detach().to(torch.bfloat16).requires_grad_() for w in args[7]]
        args = (*args[:7], weights, *args[8:])
    opcheck_operators(args)


def test_operator_without_training_buffers_refuses_backward() -> None:
    args = stack_args(4, 3, 2, True, None, False, training=False)
    y, *_ = torch.ops.rnnkern.stack(*args)
    with pytest.raises(RuntimeError, match="training=False"):
        y.sum().backward()
