"""Credentials for people: VC 2.0 (eddsa-jcs-2022), SD-JWT VC, status lists, permissions.

Sans-IO, like the rest of the core: time, randomness, the resolver and any network fetch
come in as arguments (``service.py`` builds the gateway's issuer and status lists). May
import the foundations and ``identity``, ``chain``; never an edge.
"""
