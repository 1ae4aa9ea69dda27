"""The DSMR meter variants the gateway reads: what each sends, and so what it must send.

Meters speak dialects of DSMR (the Dutch Smart Meter Requirements): DSMR 2.2 and 3 send no
CRC and no clock; DSMR 4.2 meters may send an equipment id that is not text; Belgium's
Fluvius (e-MUCS) names its version on 0-0:96.1.4; E.ON Hungary and Luxembourg's Smarty
put the equipment id on 0-0:42.0.0; Sagemcom's T210-D-R (Austria) counts in Wh and W;
EasyMeter's Q3D adds '*255' to its OBIS codes, counts to a tenth of a mWh and sends no
CRC; Iskra's meters in Ireland send neither version nor clock; Swedish meters (the H1 port)
send totals without tariffs and no equipment id. Smarty and the T210-D-R
encrypt their telegrams (:mod:`gateway.energy.dlms_frames`).

A meter's variant is set at enrolment (``didgw meter enroll --variant``); ``auto`` (the
default) takes the layout from the telegram (:func:`detect`) and accepts only telegrams
with a CRC, so a variant without one (a weaker check: nothing on the line catches a
flipped digit) is used only for a meter enrolled as such. The variant decides which lines
a telegram must carry (``required``): a telegram without them is refused (``garbled``),
whatever else it holds. Encrypted variants are never detected: their frames are not
telegrams until decrypted with the meter's key.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    crc: bool  # a telegram must carry a CRC (DSMR 4 and later)
    required: tuple[str, ...]  # OBIS codes a telegram must carry
    serial: str  # the port's settings: baud, data bits, parity, stop bits
    encrypted: bool = False
    authentication_key: bytes | None = None  # fixed for all meters of the variant
    energy: str = "kWh"  # the unit of its energy registers
    power: str = "kW"  # and of its power


_TARIFFS = ("1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2", "0-0:96.14.0")
_POWER = ("1-0:1.7.0", "1-0:2.7.0")
_TOTALS = ("1-0:1.8.0", "1-0:2.8.0")
_DSMR3 = ("0-0:96.1.1", *_TARIFFS, *_POWER)
_DSMR4 = ("1-3:0.2.8", "0-0:1.0.0", *_DSMR3)
_FLUVIUS = ("0-0:96.1.4", "0-0:1.0.0", *_DSMR3)
_EON_HU = ("0-0:1.0.0", "0-0:42.0.0", *_TOTALS, *_TARIFFS, *_POWER)
_T210 = ("1-3:0.2.8", "0-0:1.0.0", *_TOTALS, *_POWER)
_Q3D = ("0-0:96.1.255", "1-0:1.8.0", "1-0:1.7.0")
_SWEDEN = ("0-0:1.0.0", *_TOTALS, *_POWER)
_SMARTY = ("1-3:0.2.8", "0-0:1.0.0", "0-0:42.0.0", *_TOTALS, *_POWER)
_FAST, _SLOW = "115200 8N1", "9600 7E1"

#: Luxembourg's Smarty meters authenticate with a key that is the same for all of them
#: (Luxmetering E-Meter P1 Specification v1.1.3, 3.2.5); only the encryption key is secret.
SMARTY_AUTHENTICATION_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(AUTO, "any variant below that sends a CRC, by its telegram", True, (), _FAST),
        Variant("dsmr2.2", "DSMR 2.2 (no CRC, no clock)", False, _DSMR3, _SLOW),
        Variant("dsmr3", "DSMR 3 (no CRC, no clock)", False, _DSMR3, _SLOW),
        Variant("dsmr4", "DSMR 4.x", True, _DSMR4, _FAST),
        Variant("dsmr5", "DSMR 5.0", True, _DSMR4, _FAST),
        Variant("fluvius", "Belgium: Fluvius e-MUCS", True, _FLUVIUS, _FAST),
        Variant("eon-hu", "Hungary: E.ON", True, _EON_HU, _FAST),
        Variant("iskra-ie", "Ireland: Iskra", True, (*_TARIFFS, *_POWER), _FAST),
        Variant("sweden", "Sweden: the H1 port (Aidon, Kaifa …)", True, _SWEDEN, _FAST),
        Variant(
            "sagemcom-t210",
            "Austria: Sagemcom T210-D-R (Wh, W)",
            True,
            _T210,
            _FAST,
            energy="Wh",
            power="W",
        ),
        Variant("q3d", "EasyMeter Q3D (no CRC)", False, _Q3D, _SLOW, power="W"),
        Variant("smarty-plain", "Luxembourg: Smarty, decrypted", True, _SMARTY, _FAST),
        Variant(
            "smarty",
            "Luxembourg: Smarty (AES-GCM, a key per meter)",
            True,
            _SMARTY,
            _FAST,
            encrypted=True,
            authentication_key=SMARTY_AUTHENTICATION_KEY,
        ),
        Variant(
            "sagemcom-t210-encrypted",
            "Austria: Sagemcom T210-D-R, encrypted (2 keys per meter)",
            True,
            _T210,
            _FAST,
            encrypted=True,
            energy="Wh",
            power="W",
        ),
    )
}

#: What the decrypted telegram of an encrypted variant is checked as.
PLAIN_OF = {"smarty": "smarty-plain", "sagemcom-t210-encrypted": "sagemcom-t210"}


def detect(ident: str, cosem: dict[str, str]) -> str:  # noqa: PLR0911 - one rule a line
    """The variant of a telegram from its identification and lines (the first rule that
    holds): Fluvius's version line; EasyMeter's identification; Wh units; an equipment
    id on 0-0:42.0.0 (with tariffs: E.ON Hungary, without: Smarty); the version line (4x:
    DSMR 4, else DSMR 5); a total without tariffs: Sweden; none of these: Iskra IE (DSMR
    2.2-3, which have no CRC, are never detected: they need enrolling as such)."""
    if "0-0:96.1.4" in cosem:
        return "fluvius"
    if ident.startswith("/ESY") or "0-0:96.1.255" in cosem:
        return "q3d"
    if cosem.get("1-0:1.8.0", "").endswith("*Wh") or cosem.get("1-0:1.8.1", "").endswith("*Wh"):
        return "sagemcom-t210"
    if "0-0:42.0.0" in cosem:
        return "eon-hu" if "1-0:1.8.1" in cosem else "smarty-plain"
    version = cosem.get("1-3:0.2.8")
    if version is not None:
        return "dsmr4" if version.startswith("4") else "dsmr5"
    if "1-0:1.8.0" in cosem and "1-0:1.8.1" not in cosem:
        return "sweden"
    return "iskra-ie"
