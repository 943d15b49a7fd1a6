"""Collateral for DCAP quotes: the PCS v4 API as a client with a verified cache, and a simulated
Intel PCS for the software platform. Calls `verify` to check what it stores; `verify` never imports it."""

from quotehelper.pcs.cache import CollateralCache
from quotehelper.pcs.client import CollateralClient, Fetched, PcsOptions, fetch_collateral
from quotehelper.pcs.errors import PcsCode, PcsError
from quotehelper.pcs.urls import INTEL_PCS_URL, Endpoints

__all__ = ["INTEL_PCS_URL", "CollateralCache", "CollateralClient", "Endpoints", "Fetched", "PcsCode", "PcsError",
           "PcsOptions", "fetch_collateral"]
