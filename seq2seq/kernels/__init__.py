"""Hardware-specific fast paths, behind one boundary, each with a stock PyTorch fallback.

Models, losses and search import their layers and ops from here and nowhere else:

    Linear, linear, matmul_nt   oneDNN float32 products on the CPU (onednn.py)
    packed_weights              oneDNN's blocked weights while decoding on the CPU (onednn.py)
    Dropout, ReLUDropout,       dropout with 16-bit noise; tanh as 2 sigmoid(2x) - 1 (fastops.py)
      dropout, tanh_
    DeferredLSTM, applies       LSTM decoder steps whose weight gradients wait for one product
                                (lstm_step.py)

Whether each path is used is decided once per process by ``probe.py``, which runs the path on
a tiny input (each module registers its paths' probes); ``configure("off")`` turns every one of
them off. ``tune_process`` (process.py) caps oneDNN's caches and keeps freed memory: training
and decoding on the CPU call it while setting up, before any model runs, never an import.
``precision.py`` says whether bf16 runs here at all, natively, and in an LSTM; ``optim.py``
whether the fused optimizer skips a non-finite update on its own.
"""

from seq2seq.kernels import lstm_step  # noqa: F401  (registers its probe)
from seq2seq.kernels.fastops import Dropout, ReLUDropout, dropout, dropout_noise, relu_dropout, tanh_
from seq2seq.kernels.onednn import Linear, linear, matmul_nt, matmul_tn, packed_weights, uses_onednn
from seq2seq.kernels.precision import check_bf16, native_bf16
from seq2seq.kernels.probe import MODES, configure, decisions, mode
from seq2seq.kernels.process import tune_process

__all__ = [
    "MODES", "Dropout", "Linear", "ReLUDropout", "check_bf16", "configure", "decisions", "dropout", "dropout_noise",
    "linear", "lstm_step", "matmul_nt", "matmul_tn", "mode", "native_bf16", "packed_weights", "relu_dropout",
    "tanh_", "tune_process", "uses_onednn",
]
