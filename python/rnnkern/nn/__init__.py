"""Layer modules built on rnnkern's functional API, with PyTorch's parameter names."""
from .attention import LuongAttention
from .cells import GRUCell, LSTMCell, RNNCell
from .embedding import Embedding
from .linear import Linear
from .rnn import GRU, LSTM, RNN

__all__ = ["GRU", "LSTM", "RNN", "Embedding", "GRUCell", "LSTMCell", "Linear", "LuongAttention",
           "RNNCell"]
