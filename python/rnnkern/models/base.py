"""`Model`: a named stack of layers with one flat params / grads / state_dict, and checkpoints.

A model registers its sub-layers (`rnnkern.nn` modules) by name; its `params` / `grads` are the
sub-layers' own arrays keyed ``"<layer>.<param>"`` (e.g. ``"rnn.weight_ih_l0"``), so one
optimizer built on them updates every layer in place. A checkpoint is one ``.npz`` file holding
the parameters, the model's class name and constructor config (JSON) and optional metadata.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Mapping, Protocol, Tuple, Type, Union

import numpy as np
import numpy.typing as npt

from .. import nn

__all__ = ["Model", "Layer", "make_rnn", "register_model", "save_checkpoint", "load_checkpoint",
           "CELLS"]

Array = npt.NDArray[Any]
State = Union[Array, Tuple[Array, Array]]

CELLS = ("lstm", "gru", "rnn")
_REGISTRY: Dict[str, Type["Model"]] = {}
_FORMAT = "rnnkern-checkpoint-1"


class Layer(Protocol):
    """What a model needs of a sub-layer (every `rnnkern.nn` module has it)."""

    params: dict[str, Array]
    grads: dict[str, Array]

    def zero_grad(self) -> None: ...

    def state_dict(self) -> dict[str, Array]: ...

    def load_state_dict(self, mapping: Mapping[str, Any]) -> None: ...


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
             dtype: npt.DTypeLike, seed: np.random.Generator, precision: str = "float",
             layer_norm: bool = False) -> Any:
    """The recurrent layer of a cell name: "lstm", "gru" or "rnn" (tanh); ``layer_norm`` (LSTM
    only) makes it `nn.LSTM(..., layer_norm=True)`."""
    kw: dict[str, Any] = {"dropout": dropout, "dtype": dtype, "seed": seed, "precision": precision}
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, num_layers, layer_norm=layer_norm, **kw)
    if layer_norm is not False and cell in CELLS:
        raise ValueError(f"layer_norm: only cell='lstm' has a layer-normalized form, got "
                         f"layer_norm={layer_norm!r} with cell={cell!r}")
    if cell == "gru":
        return nn.GRU(input_size, hidden_size, num_layers, **kw)
    if cell == "rnn":
        return nn.RNN(input_size, hidden_size, num_layers, **kw)
    raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")


def register_model(cls: Type["Model"]) -> Type["Model"]:
    """Class decorator: make a model class loadable from checkpoints by its name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class Model:
    """Base class of the models: sub-layers in `layers`, their parameters as one flat dict.

    Subclasses call `_add(name, layer)` for each sub-layer and keep their constructor arguments
    in `config` (JSON-serializable), so `type(model)(**model.config)` rebuilds the architecture.
    """

    config: Dict[str, Any]

    def __init__(self) -> None:
        self.layers: Dict[str, Layer] = {}

    def _add(self, name: str, layer: Any) -> Any:
        if "." in name or name in self.layers:
            raise ValueError(f"name: {name!r} must be new and contain no '.'")
        self.layers[name] = layer
        return layer

    @property
    def params(self) -> dict[str, Array]:
        """Every sub-layer's parameter arrays (the arrays themselves), keyed "<layer>.<name>"."""
        return {f"{ln}.{pn}": p for ln, layer in self.layers.items()
                for pn, p in layer.params.items()}

    @property
    def grads(self) -> dict[str, Array]:
        """The gradient arrays matching `params`."""
        return {f"{ln}.{pn}": g for ln, layer in self.layers.items()
                for pn, g in layer.grads.items()}

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for layer in self.layers.values():
            layer.zero_grad()

    def state_dict(self) -> dict[str, Array]:
        """Copies of all parameters, keyed like `params`."""
        return {f"{ln}.{pn}": p for ln, layer in self.layers.items()
                for pn, p in layer.state_dict().items()}

    def load_state_dict(self, mapping: Mapping[str, Any]) -> None:
        """Load every parameter (arrays or torch tensors keyed like `params`), in place.

        Keys are checked for all layers before anything is loaded (KeyError naming them); each
        layer then checks shapes and dtypes as its own `load_state_dict` does.
        """
        missing = [k for k in self.params if k not in mapping]
        unexpected = [str(k) for k in mapping if k not in self.params]
        if missing:
            raise KeyError(f"load_state_dict: missing parameter(s) {', '.join(missing)}")
        if unexpected:
            raise KeyError(f"load_state_dict: unexpected parameter(s) {', '.join(unexpected)}")
        for k, p in self.params.items():
            shape = tuple(getattr(mapping[k], "shape", np.shape(mapping[k])))
            if shape != p.shape:
                raise ValueError(f"{k}: expected shape {p.shape}, got {shape}")
        for ln, layer in self.layers.items():
            layer.load_state_dict({pn: mapping[f"{ln}.{pn}"] for pn in layer.params})

    def num_params(self) -> int:
        """The number of scalar parameters."""
        return sum(p.size for p in self.params.values())

    def save(self, path: Union[str, os.PathLike[str]], **meta: Any) -> None:
        """`save_checkpoint(path, self, **meta)`."""
        save_checkpoint(path, self, **meta)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={layer!r}" for n, layer in self.layers.items())
        return f"{type(self).__name__}({inner})"


def save_checkpoint(path: Union[str, os.PathLike[str]], model: Model, **meta: Any) -> None:
    """Write the model's parameters, class, config and ``meta`` (JSON-serializable) to one .npz.

    The file holds ``param/<name>`` arrays and a JSON header; it loads without pickle.
    """
    header = {"format": _FORMAT, "model": type(model).__name__, "config": model.config,
              "meta": meta}
    arrays: Dict[str, Any] = {f"param/{k}": v for k, v in model.state_dict().items()}
    arrays["header"] = np.array(json.dumps(header))
    with open(path, "wb") as f:  # keeps the exact file name (np.savez would append .npz)
        np.savez(f, **arrays)


def _not_a_checkpoint(name: str, why: str) -> ValueError:
    return ValueError(f"path: {name!r} is not an rnnkern checkpoint ({why})")


def load_checkpoint(path: Union[str, os.PathLike[str]]) -> Tuple[Model, Dict[str, Any]]:
    """Rebuild the model saved by `save_checkpoint`; returns (model, meta).

    A file that is not one (text, a pickle, an .npy, an .npz of other arrays, a damaged archive)
    raises ValueError saying so; a missing file raises OSError. Nothing is unpickled.
    """
    name = os.fspath(path)
    with open(path, "rb") as f:  # ours to close, also when np.load fails half-way
        try:
            data = np.load(f, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile) as err:  # e.g. text or a pickle
            raise _not_a_checkpoint(name, "not an .npz archive, or a damaged one") from err
        if not isinstance(data, np.lib.npyio.NpzFile):  # an .npy holds one bare array
            raise _not_a_checkpoint(name, "an .npy array, not an .npz archive")
        with data:
            return _read_checkpoint(data, name)


def _read_checkpoint(data: np.lib.npyio.NpzFile, name: str) -> Tuple[Model, Dict[str, Any]]:
    """`load_checkpoint` of an open .npz archive."""
    try:
        header = json.loads(str(data["header"])) if "header" in data.files else None
    except (ValueError, zipfile.BadZipFile) as err:  # not JSON, pickled, a damaged member
        raise _not_a_checkpoint(name, "its header is not rnnkern's") from err
    if not isinstance(header, dict) or "format" not in header:
        raise _not_a_checkpoint(name, f"no rnnkern header; it holds "
                                      f"{', '.join(data.files) or 'nothing'}")
    if header["format"] != _FORMAT:
        raise ValueError(f"path: unknown checkpoint format {header['format']!r}")
    cls = _REGISTRY.get(header.get("model", ""))
    if cls is None:
        raise ValueError(f"path: unknown model class {header.get('model')!r}")
    try:
        params = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    except (ValueError, zipfile.BadZipFile) as err:  # pickled or damaged arrays
        raise _not_a_checkpoint(name, "its parameters are not plain arrays") from err
    try:
        model = cls(**header.get("config", {}))
        model.load_state_dict(params)
    except (TypeError, ValueError, KeyError) as err:
        why = err.args[0] if err.args else type(err).__name__
        raise ValueError(f"path: {name!r} is a damaged {cls.__name__} checkpoint: {why}") from err
    meta: Dict[str, Any] = header.get("meta", {})
    return model, meta
