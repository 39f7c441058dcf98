"""The smoke test run inside the environment, and the pure judgement of its output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Runs in the env's own interpreter; prints one JSON line. Each step is isolated so one
# failure still reports the others.
SCRIPT = r"""
import json, sys
r = {"python": "%d.%d" % sys.version_info[:2]}
try:
    import torch
    r["version"] = torch.__version__
    r["cuda"] = torch.version.cuda
    r["cuda_available"] = bool(torch.cuda.is_available())
    try:
        t = torch.tensor([1.0, 2.0, 3.0]) * 2
        r["tensor_sum"] = float(t.sum())
    except Exception as e:
        r["tensor_error"] = "%s: %s" % (type(e).__name__, e)
    try:
        import numpy
    except ImportError:
        r["numpy"] = None
    else:
        try:
            a = numpy.arange(3, dtype="float32")
            r["numpy"] = numpy.__version__
            r["from_numpy_sum"] = float(torch.from_numpy(a).sum())
        except Exception as e:
            r["numpy"] = getattr(numpy, "__version__", "?")
            r["numpy_error"] = "%s: %s" % (type(e).__name__, e)
except Exception as e:
    r["import_error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(r))
"""


CheckStatus = Literal["pass", "fail", "not run", "info"]


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str = ""


def judge(result: dict, want_version: str | None, want_cuda: str | None, gpu_present: bool) -> list[Check]:
    """Turn the script's JSON into checks against the lock's variant."""
    if "import_error" in result:
        return [Check("import torch", "fail", result["import_error"])]
    checks = [Check("import torch", "pass")]
    got = result.get("version")
    if want_version is None:
        checks.append(Check("version", "info", f"{got} (lock names no torch)"))
    else:
        checks.append(Check("version", "pass" if got == want_version else "fail", f"{got}" + ("" if got == want_version else f" != lock's {want_version}")))
    cuda = result.get("cuda")
    checks.append(Check("torch.version.cuda", "pass" if cuda == want_cuda else "fail",
                        f"{cuda}" + ("" if cuda == want_cuda else f" != variant's {want_cuda}")))
    avail = result.get("cuda_available")
    if want_cuda and gpu_present and not avail:
        checks.append(Check("cuda.is_available", "fail", "False with an NVIDIA GPU present"))
    else:
        checks.append(Check("cuda.is_available", "info", str(avail)))
    if "tensor_error" in result:
        checks.append(Check("tensor op", "fail", result["tensor_error"]))
    else:
        ok = result.get("tensor_sum") == 12.0
        checks.append(Check("tensor op", "pass" if ok else "fail", f"sum={result.get('tensor_sum')}"))
    if result.get("numpy") is None:
        checks.append(Check("numpy interop", "not run", "numpy not in the environment"))
    elif "numpy_error" in result:
        checks.append(Check("numpy interop", "fail", result["numpy_error"]))
    else:
        ok = result.get("from_numpy_sum") == 3.0
        checks.append(Check("numpy interop", "pass" if ok else "fail", f"numpy {result['numpy']}"))
    return checks
