"""ragserve's shared core: the vocabulary every component speaks.

Everything here may be imported by every package (`indexer`, `retriever`, `reader`, `service`) and
imports none of them: the domain errors (`errors`), the value types that cross package boundaries
(`types`), number formats (`precision`), the compute-thread runtime (`compute`) and the one atomic
write (`atomic`). Importing it does not import torch: the modules that need torch import it when
they are first used.
"""
