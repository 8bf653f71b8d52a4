"""rnnexp: a command-line experiment runner for recurrent networks."""
import os

# MKL rounds a matrix product by where its operands sit in memory unless Conditional Numerical Reproducibility
# is on; then a copy of a model trained among others (compare, seeds) would not train bit for bit as it does alone
# whenever its matrices are not 64-byte aligned (an odd hidden size). MKL reads this at its first product.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
