"""embedstream: streaming embedding of document-change events (see README.md)."""
import os

# One OpenBLAS thread: the process's numpy work is small matrix products (pooling, drift
# signals), and BLAS threads spinning against ONNX Runtime's threads on few cores made them
# ~15x slower (DRIFT.md). Set before numpy is imported; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
