"""`python -m bertfast.info`: print what this bertfast is and what it runs on (bertfast._info).

The package exports the function `bertfast.info`; importing this module would replace that
attribute with the module, so the module is made callable too and `bertfast.info()` keeps working.
"""
import sys
import types

from ._info import collect_info, format_info, info


class _CallableModule(types.ModuleType):
    def __call__(self, file=None):
        return info(file)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["collect_info", "format_info", "info"]

if __name__ == "__main__":
    info()
