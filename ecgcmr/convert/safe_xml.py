"""Parsing untrusted XML files (the ECG converters' shared front door).

One rule for every XML ECG format (GE CardioSoft, GE MUSE): a size bound before anything is
read, then ``defusedxml`` with entity declarations and external references refused (billion
laughs, quadratic blow-up, XXE). A plain ``<!DOCTYPE X SYSTEM "x.dtd">`` is allowed: both GE
formats write one (MUSE: ``restecg.dtd``) and it is never fetched. Every problem is a
:class:`~ecgcmr.errors.DataError` without a path; the caller adds the file.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ecgcmr.errors import DataError

MAX_XML_BYTES = 32 * 2**20  # a resting ECG file is ~0.1-0.5 MB; refuse anything absurd


def parse_xml_file(path: Path, *, max_bytes: int = MAX_XML_BYTES) -> Element:
    """Bytes of ``path`` -> root element, through defusedxml (no entities, no external refs).

    Raises :class:`DataError` (no path) for a file over ``max_bytes``, an unreadable file, an
    entity declaration / external reference, or XML that is not well-formed.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError("XML file too large", expected=f"<= {max_bytes} bytes",
                            found=f"{size} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror or exc})") from exc
    try:
        # forbid_dtd stays False: a plain <!DOCTYPE ... SYSTEM "..."> is harmless (never
        # fetched); entity declarations and external references are what is refused
        return fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise DataError(f"XML entity expansion / external reference refused ({exc})") from exc
    except ParseError as exc:
        raise DataError(f"not well-formed XML ({exc})") from exc
