"""The AESM wire protocol: schema (messages.proto), framing, per-call handlers, server, client.

See /work/shared/docs/aesm-protocol.md (sections 1-3) for the behaviour reproduced here.
"""
