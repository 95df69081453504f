"""The kernel report without importing bertfast (so without its compiled extension): loads
bertfast/kernel_report as a stand-alone package. Same options as `python -m bertfast.kernel_report`.

    python tools/kernel_report.py [--json report.json]
"""
import importlib.util
import os
import sys

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bertfast", "kernel_report")

spec = importlib.util.spec_from_file_location("kernel_report", os.path.join(HERE, "__init__.py"),
                                              submodule_search_locations=[HERE])
package = importlib.util.module_from_spec(spec)
sys.modules["kernel_report"] = package
spec.loader.exec_module(package)

if __name__ == "__main__":
    sys.exit(package.main())
