"""README "A lab's first week", step 5 (issue 22 item 23): ``--register-kernel`` needs ipykernel on
the mirror and the default spec has none. The walkthrough adds it to ``extra_packages`` and
syncs before it locks and creates the kernel; here its own commands are run on a copy of the
committed spec, which must then ask for ipykernel (and still for numpy)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from torchdepot.spec.mirror import load_spec

ROOT = Path(__file__).resolve().parent.parent


def _step5() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**5. Locked environments and Jupyter.**"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    lines, joined = [], ""
    for line in block.splitlines():  # join backslash continuations, as the shell does
        joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return [ln for ln in lines if ln]


def test_step5_adds_ipykernel_and_syncs_before_it_registers_a_kernel():
    cmds = _step5()
    spec_edit = next(i for i, c in enumerate(cmds) if "mirror/mirror.yaml" in c and "ipykernel" in c)
    sync = next(i for i, c in enumerate(cmds) if c.startswith("make mirror"))
    kernel = next(i for i, c in enumerate(cmds) if "--register-kernel" in c)
    assert spec_edit < sync < kernel


def test_step5_spec_edit_gives_a_spec_with_ipykernel(tmp_path):
    (tmp_path / "mirror").mkdir()
    shutil.copyfile(ROOT / "mirror" / "mirror.yaml", tmp_path / "mirror" / "mirror.yaml")
    assert "ipykernel" not in load_spec(tmp_path / "mirror" / "mirror.yaml").extra_packages
    edit = next(c for c in _step5() if "mirror/mirror.yaml" in c and "ipykernel" in c)
    subprocess.run(["bash", "-c", edit], cwd=tmp_path, check=True, timeout=30)
    spec = load_spec(tmp_path / "mirror" / "mirror.yaml")
    assert list(spec.extra_packages) == ["numpy", "ipykernel"]
