"""NumPy reference of rnnkern's functional API: the equations written out step by step.

Same signatures, argument checks and results as the compiled kernels (docs/api.md); slow but
obviously correct, and the standard every kernel is tested against.
"""
from ._common import Cache
from .gru import gru_backward, gru_forward
from .loss import softmax, softmax_cross_entropy
from .lstm import lstm_backward, lstm_forward
from .packed import PackedWeights, gru_pack, lstm_pack, rnn_pack
from .rnn import rnn_backward, rnn_forward

__all__ = [
    "Cache",
    "PackedWeights",
    "gru_backward",
    "gru_forward",
    "gru_pack",
    "lstm_backward",
    "lstm_forward",
    "lstm_pack",
    "rnn_backward",
    "rnn_forward",
    "rnn_pack",
    "softmax",
    "softmax_cross_entropy",
]
