"""Geocoder: an address to coordinates.

A stand-in for an HTTP geocoding API (the demo and the tests have no network): the
coordinates are derived from the address, so the same address always gives the same
point, as a real geocoder's would.
"""

from __future__ import annotations

import hashlib


def locate(address: str) -> tuple[float, float]:
    """(latitude, longitude) of ``address``."""
    digest = hashlib.sha256(address.strip().lower().encode()).digest()
    lat = int.from_bytes(digest[:4]) / 2**32 * 180 - 90
    lng = int.from_bytes(digest[4:8]) / 2**32 * 360 - 180
    return round(lat, 6), round(lng, 6)
