"""How a class is named on the page: the one place that turns a manifest's ASCII class
name into its proper spelling ("secondary gamma prime" -> "secondary γ′",
"widmanstatten" -> "Widmanstätten"). The API keeps the manifest's names as keys (the CSV,
scripts and the store use them); payloads carry the display name beside each.
"""

from __future__ import annotations

import re

# Whole words only: "alphabet" stays, "alpha" becomes α. Primes follow their letter.
_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "zeta": "ζ", "eta": "η",
    "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "sigma": "σ", "tau": "τ", "phi": "φ",
    "chi": "χ", "omega": "ω",
}
_PROPER = {"widmanstatten": "Widmanstätten", "widmanstaetten": "Widmanstätten", "laves": "Laves"}
_PRIMES = {"double prime": "″", "prime": "′"}
_WORD = re.compile(r"[A-Za-z]+(?: double prime| prime)?")


def _spell(match: re.Match[str]) -> str:
    text = match.group(0)
    word, _, prime = text.partition(" ")
    lower = word.lower()
    if lower in _GREEK:
        return _GREEK[lower] + _PRIMES.get(prime, "")
    if lower in _PROPER:
        return _PROPER[lower] + (f" {prime}" if prime else "")
    return text


def display_name(name: str) -> str:
    """``name`` with Greek letters, primes and proper nouns spelled as a metallographer
    writes them; anything else unchanged."""
    return _WORD.sub(_spell, name)
