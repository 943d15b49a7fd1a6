"""kubelet device plugin (API v1beta1): `framework` serves and registers any plugin, `sgx` says which SGX
devices a node has and what Allocate returns for them."""
