"""What a day of anchors costs on a ledger: how many, how much gas, how much ether.

An operator choosing a public network or a consortium chain needs the figure before
funding the gateway's account. The gateway sends an anchor when ``every_entries`` entries
are new or ``every_seconds`` have passed with at least one new entry (``[anchor]``), so at
``entries_per_day`` (spread over the day) it sends

    min(entries_per_day, max(86,400 / every_seconds, entries_per_day / every_entries))

anchors a day: never more than one per new entry, and otherwise whichever rule fires first.
Each is a plain transaction with 110 bytes of input (``encoding.py``); its gas is at most
:func:`~gateway.anchor.encoding.anchor_gas` of 110 non-zero bytes (25,400: the EIP-7623
floor, which is what the bytes of hashes cost). A replaced transaction (higher fees for the
same nonce) is paid once, by the one mined. What the chain charges on top (a rollup's fee
for posting its data to layer 1) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.anchor.encoding import LENGTH, anchor_gas

SECONDS_PER_DAY = 86_400
#: The most gas one anchor takes (all 110 bytes non-zero).
GAS_PER_ANCHOR = anchor_gas(b"\x01" * LENGTH)
GWEI_PER_ETHER = 10**9


@dataclass(frozen=True)
class DayOfAnchors:
    """A day's anchors and what they cost at one fee per gas."""

    anchors: float
    gas: float
    fee_gwei: float  # per gas: base fee plus tip, what the ledger charges

    @property
    def ether(self) -> float:
        return self.gas * self.fee_gwei / GWEI_PER_ETHER


def anchors_per_day(every_seconds: float, every_entries: int, entries_per_day: float) -> float:
    """How many anchors a day the gateway sends (see the module docstring)."""
    if every_seconds <= 0 or every_entries <= 0 or entries_per_day < 0:
        raise ValueError("every_seconds and every_entries must be positive, entries not negative")
    by_rule = max(SECONDS_PER_DAY / every_seconds, entries_per_day / every_entries)
    return min(entries_per_day, by_rule)


def day_of_anchors(
    every_seconds: float, every_entries: int, entries_per_day: float, fee_gwei: float
) -> DayOfAnchors:
    """A day's anchors at ``fee_gwei`` per gas."""
    if fee_gwei < 0:
        raise ValueError("the fee per gas must not be negative")
    anchors = anchors_per_day(every_seconds, every_entries, entries_per_day)
    return DayOfAnchors(anchors, anchors * GAS_PER_ANCHOR, fee_gwei)
