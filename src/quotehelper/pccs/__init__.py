"""A PCCS-compatible caching service: Intel PCCS's HTTP API (v3/v4, SGX and TDX) over SQLite or
PostgreSQL, filled from Intel's PCS, Azure THIM, another PCCS or the simulated PCS, checking everything
before it is stored, refreshing each item ahead of its own nextUpdate."""
