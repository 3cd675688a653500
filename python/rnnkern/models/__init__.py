"""Models built from `rnnkern.nn` layers, with one params / grads dict and checkpoints."""
from .base import Model, load_checkpoint, register_model, save_checkpoint
from .charlm import CharLM
from .classifier import BagOfWords, SequenceClassifier
from .seq2seq import Seq2Seq

__all__ = ["Model", "CharLM", "Seq2Seq", "SequenceClassifier", "BagOfWords",
           "save_checkpoint", "load_checkpoint",
           "register_model"]
