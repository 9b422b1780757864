"""Start-up hook of every Python process in a variant test run (csrc/tests/torch_variant.py puts
this folder first on PYTHONPATH): loads the library named by VGGRPO_VARIANT_LIB as vggrpo._C
before anything imports vggrpo. So the test process, and every process it starts (the CLI,
torchrun workers, scripts), runs the variant and never the installed extension.
"""

import os

if os.environ.get("VGGRPO_VARIANT_LIB"):
    import importlib.util
    import sys

    import torch  # noqa: F401  (the library links against torch's own libraries)

    _spec = importlib.util.spec_from_file_location("vggrpo._C", os.environ["VGGRPO_VARIANT_LIB"])
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules["vggrpo._C"] = _module
