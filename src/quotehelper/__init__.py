"""quotehelper: out-of-process SGX quoting (AESM wire protocol) and DCAP quote verification."""

__version__ = "0.1.0"
