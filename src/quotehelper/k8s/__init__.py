"""Kubernetes integration: kubelet device plugin, mutating admission webhook, health probe."""
