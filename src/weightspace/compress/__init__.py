"""Compression archives (``.wsz``): compress a collection, reconstruct models, project unseen ones."""

from weightspace.compress._archive import FORMAT, VERSION, Archive
from weightspace.compress._compress import compress
from weightspace.compress._project import project
from weightspace.compress._reconstruct import reconstruct, reconstruct_tensors

__all__ = ["FORMAT", "VERSION", "Archive", "compress", "project", "reconstruct", "reconstruct_tensors"]
