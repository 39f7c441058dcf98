"""doctor on recorded machines: fake nvidia-smi / rocm_agent_enumerator on PATH printing
recorded outputs, recorded /proc and /sys files under TORCHDEPOT_SYSROOT, a served mirror."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.httpserver import Server
from torchdepot.doctor import check
from torchdepot.doctor.detect import Gpu, Machine, detect, parse_smi
from torchdepot.doctor.recommend import MirrorChoice, assess, choose_mirrored
from torchdepot.errors import ParseError
from torchdepot.model import gpu_tables as drivers

FIX = Path(__file__).resolve().parent / "fixtures" / "doctor"
CAPTURE_2023 = "index_pages/download.pytorch.org_whl_simple_2023-10"


# --- the driver table ------------------------------------------------------------
def test_table_matches_compat_yaml(data_dir):
    doc = yaml.safe_load((data_dir / "compat.yaml").read_text())
    rows = doc["nvidia_driver_minimums"]["minor_version_compatibility"]["rows"]
    assert tuple((str(r["cuda"]), str(r["linux_min_driver"]), str(r["windows_min_driver"])) for r in rows) == drivers.CUDA_DRIVER_MINIMUMS


@pytest.mark.parametrize(("driver", "os_", "expected"), [
    ("470.182.03", "linux", "11.8"), ("525.60.13", "linux", "12.9"), ("525.60.12", "linux", "11.8"),
    ("535.104.05", "linux", "12.9"), ("580.65.06", "linux", "13.2"), ("450.36.06", "linux", "11.0"),
    ("450.80.02", "linux", "11.8"), ("396.26", "linux", "9.2"), ("300.1", "linux", None),
    ("528.33", "windows", "12.9"), ("527.99", "windows", "11.8"), ("581.15", "windows", "13.2"), (None, "linux", None),
])
def test_max_cuda(driver, os_, expected):
    assert drivers.max_cuda(driver, os_) == expected


def test_untabled_cuda_inside_a_band():
    assert drivers.driver_supports("535.104.05", "12.7")
    assert not drivers.driver_supports("470.1", "12.7")
    assert not drivers.driver_supports("580.65.06", "14.0")  # a CUDA major newer than the table: unknown
    assert drivers.min_driver("12.7") == "525.60.13"
    assert drivers.min_driver("13.3") == "580"
    assert drivers.min_driver("14.0") is None
    assert drivers.min_driver("x") is None


# --- pure recommendation ---------------------------------------------------------
def _m(driver=None, gpus=(), os_="linux"):
    return Machine(os=os_, arch="x86_64", python="3.11", glibc="2.36", gpus=tuple(gpus), driver=driver)


def compatible(machine, offered=None):
    return list(assess(machine, offered).compatible)


def test_compatible_order_and_cpu_last():
    c = compatible(_m("535.104.05"))
    assert c == ["cu126", "cpu"]  # current variants only: no cu80..cu102, no cu128 (not built since 2.11)
    assert compatible(_m("580.65.06"))[:3] == ["cu132", "cu130", "cu126"]
    assert compatible(_m()) == ["cpu"]
    assert compatible(_m("535.104.05", os_="macos")) == ["cpu"]
    amd = compatible(_m(gpus=[Gpu("gfx90a", None, None, "amd")]))
    assert amd == ["rocm7.2", "rocm7.1", "cpu"]
    assert compatible(_m(gpus=[Gpu("gfx90a", None, None, "amd")]), {"cpu": ["2.5.1"], "rocm6.2": ["2.5.1"]})[0] == "rocm6.2"
    assert compatible(_m(gpus=[Gpu("gfx803", None, None, "amd")]), {"rocm6.2": ["2.5.1"], "rocm5.7": ["2.3.1"]}) == ["rocm5.7", "cpu"]
    assert compatible(_m(gpus=[Gpu("Intel GPU 0x56a0", None, None, "intel")]))[0] == "xpu"
    a = assess(_m("470.182.03", [Gpu("Tesla T4", "470.182.03", None)]), {"cpu": ["2.5.1"], "cu121": ["2.5.1"], "cu118": ["2.5.1"]})
    assert choose_mirrored(a, {"cpu": ["2.5.1"], "cu121": ["2.5.1"], "cu118": ["2.5.1"]}) == ("cu118", "2.5.1")
    assert choose_mirrored(assess(_m()), {"cu121": ["2.5.1"]}) is None


def _gpu(name, cap, driver="580.65.06"):
    return Gpu(name, driver, cap)


@pytest.mark.parametrize(("name", "cap", "driver", "want"), [
    ("NVIDIA GeForce GTX 1080", "6.1", "580.65.06", "cu126"),  # the issue: never cu132 for Pascal
    ("Tesla V100-SXM2-16GB", "7.0", "580.65.06", "cu126"),  # Volta: not in cu130/cu132
    ("NVIDIA A100-SXM4-40GB", "8.0", "580.65.06", "cu132"),
    ("NVIDIA GeForce RTX 4090", "8.9", "550.127.05", "cu126"),  # the driver caps it at 12.x
    ("NVIDIA H100 80GB HBM3", "9.0", "580.65.06", "cu132"),
    ("NVIDIA B200", "10.0", "580.65.06", "cu132"),
    ("NVIDIA GeForce RTX 5090", "12.0", "525.60.13", "cu129"),  # no current build under 580: the newest older one with sm_120
    ("Tesla K40m", "3.5", "580.65.06", "cpu"),
])
def test_architecture_decides(name, cap, driver, want):
    a = assess(_m(driver, [_gpu(name, cap, driver)]))
    assert a.recommended == want
    idle = [w for w in a.warnings if "GPU will sit idle" in w]
    assert bool(idle) == (want == "cpu")
    if want == "cpu":
        assert name in idle[0]


def test_gtx1080_on_580_reasons():
    a = assess(_m("580.65.06", [_gpu("NVIDIA GeForce GTX 1080", "6.1")]))
    assert a.compatible == ("cu126", "cpu")
    assert a.fit("cu132").fits == "no"
    assert "sm_75" in a.fit("cu132").reason
    assert "6.1" in a.fit("cu132").reason
    assert a.fit("cu126").torch == "2.14"


def test_old_driver_gets_the_newest_older_variant_that_fits():
    a = assess(_m("470.182.03", [Gpu("Tesla T4", "470.182.03", None)]))  # no compute_cap: T4 is 7.5 by name
    assert a.recommended == "cu118"
    assert a.fit("cu118").torch == "2.7"
    assert any("no current build fits" in w for w in a.warnings)


def test_mirror_version_that_still_carries_the_arch():
    """2.11.0+cu128 dropped Volta, 2.10.0+cu128 still has sm_70 (measured, pytorch#182250)."""
    v100 = _m("535.104.05", [_gpu("Tesla V100-SXM2-16GB", "7.0", "535.104.05")])
    offered = {"cu128": ("2.11.0", "2.10.0"), "cpu": ("2.11.0",)}
    assert choose_mirrored(assess(v100, offered), offered) == ("cu128", "2.10.0")
    only_new = {"cu128": ("2.11.0",), "cpu": ("2.11.0",)}
    a = assess(v100, only_new)
    assert choose_mirrored(a, only_new) == ("cpu", "2.11.0")
    assert any("GPU will sit idle" in w and "sm_75" in w for w in a.warnings)


def test_untabled_torch_is_allowed_last_with_a_warning():
    h100 = _m("580.65.06", [_gpu("NVIDIA H100 80GB HBM3", "9.0")])
    offered = {"cu132": ("2.30.0",), "cu130": ("2.13.0",)}
    a = assess(h100, offered)
    assert a.compatible == ("cu130", "cu132", "cpu")
    offered = {"cu132": ("2.30.0",)}
    a = assess(h100, offered)
    assert a.recommended == "cu132"
    assert any("get_arch_list" in w for w in a.warnings)


def test_arch_table_facts():
    b = drivers.arch_build("2.11.0", "cu128", "linux-x86_64")
    assert b.arch_list == ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")  # pytorch#182250, measured
    assert drivers.arch_build("2.10.0", "cu128", "linux-x86_64").covers((7, 0))
    assert drivers.arch_build("2.7.1", "cu128", "linux-x86_64").arch_list[-1] == "compute_120"
    assert drivers.arch_build("2.7.1", "cu128", "linux-x86_64").covers((12, 1))
    assert not drivers.arch_build("2.14", "cu130", "linux-x86_64").covers((6, 1))
    assert drivers.arch_build("2.14", "cu126", "windows-amd64").covers((6, 1))
    assert not drivers.arch_build("2.14", "cu126", "linux-x86_64").covers((10, 0))  # sm_90 SASS never runs on Blackwell
    assert drivers.arch_build("2.3.0", "cu999", "linux-x86_64") is None
    assert drivers.current_cuda_variants("linux-x86_64") == ("cu126", "cu130", "cu132")
    with pytest.raises(ParseError, match="'sm_80' is not a compute capability"):
        drivers.parse_compute_cap("sm_80")


def test_arch_table_is_in_the_docs():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gpu-architectures.md").read_text()
    for (minor, variant, platform), b in drivers.ARCH_TABLE.items():
        assert f"| {minor[0]}.{minor[1]} | {variant} | {platform} | {' '.join(b.arch_list)} |" in doc
    for key in drivers.ARCH_SOURCES:
        assert f"`{key}`" in doc


@pytest.mark.parametrize(("url", "pip", "uv"), [
    ("http://torchlab:8000/whl/cu126", "pip install --index-url http://torchlab:8000/whl/cu126 --trusted-host torchlab:8000 torch==2.9.1",
     "uv pip install --index-url http://torchlab:8000/whl/cu126 --allow-insecure-host torchlab:8000 torch==2.9.1"),
    ("http://10.0.0.5/whl/cu126", "pip install --index-url http://10.0.0.5/whl/cu126 --trusted-host 10.0.0.5 torch==2.9.1",
     "uv pip install --index-url http://10.0.0.5/whl/cu126 --allow-insecure-host 10.0.0.5 torch==2.9.1"),
    ("https://torchlab.example/whl/cu126", "pip install --index-url https://torchlab.example/whl/cu126 torch==2.9.1",
     "uv pip install --index-url https://torchlab.example/whl/cu126 torch==2.9.1"),
    ("http://127.0.0.1:8000/whl/cu126", "pip install --index-url http://127.0.0.1:8000/whl/cu126 torch==2.9.1",
     "uv pip install --index-url http://127.0.0.1:8000/whl/cu126 torch==2.9.1"),
    ("http://localhost:8000/whl/cu126", "pip install --index-url http://localhost:8000/whl/cu126 torch==2.9.1",
     "uv pip install --index-url http://localhost:8000/whl/cu126 torch==2.9.1"),
])
def test_install_commands(url, pip, uv):
    c = MirrorChoice("cu126", "2.9.1", url)
    assert (c.command, c.uv_command) == (pip, uv)


# --- detection on recorded machines ------------------------------------------------
def fake_tool(bindir: Path, name: str, stdout: Path | None, *, stderr_on_cap: Path | None = None,
              fallback: Path | None = None, code: int = 0) -> None:
    """A recorded stand-in for a real tool: prints the recorded output, like the tool did."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = ["#!/bin/sh"]
    if stderr_on_cap is not None:
        script += [f'case "$*" in *compute_cap*) cat "{stderr_on_cap}" >&2; exit 2;; esac']
        stdout = fallback
    if stdout is not None:
        script.append(f'cat "{stdout}"')
    script.append(f"exit {code}")
    path = bindir / name
    path.write_text("\n".join(script) + "\n")
    path.chmod(0o755)


def sysroot(tmp: Path, proc_version: str | None = None, sys_version: str | None = None,
            gpu_info: bool = False, intel: bool = False) -> Path:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    if proc_version:
        (root / "proc/driver/nvidia").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIX / proc_version, root / "proc/driver/nvidia/version")
    if gpu_info:
        d = root / "proc/driver/nvidia/gpus/0000:07:00.0"
        d.mkdir(parents=True)
        shutil.copyfile(FIX / "proc_gpu_information_a100", d / "information")
    if sys_version:
        (root / "sys/module/nvidia").mkdir(parents=True)
        (root / "sys/module/nvidia/version").write_text(sys_version + "\n")
    if intel:
        d = root / "sys/bus/pci/devices/0000:00:02.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x8086\n")
        (d / "class").write_text("0x030000\n")
        (d / "device").write_text("0x56a0\n")
        n = root / "sys/bus/pci/devices/0000:00:1f.3"  # Intel audio: not a GPU
        n.mkdir(parents=True)
        (n / "vendor").write_text("0x8086\n")
        (n / "class").write_text("0x040300\n")
    return root


def doctor(tmp: Path, *args: str, root: Path | None = None, env_extra: dict | None = None, check_rc=True):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHDEPOT_CUDA_DRIVER", "TORCHDEPOT_SYSROOT")}
    env["PATH"] = f"{tmp / 'bin'}:/usr/bin:/bin"
    env["TORCHDEPOT_SYSROOT"] = str(root or sysroot(tmp))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=120)
    if check_rc:
        assert proc.returncode == 0, proc.stderr
    return proc


def doctor_json(tmp: Path, *args: str, **kw) -> dict:
    return json.loads(doctor(tmp, "--json", *args, **kw).stdout)


REQUIRED = {"os", "arch", "python", "glibc", "gpus", "driver", "max_cuda", "compatible", "recommended"}


def test_single_gpu_nvidia_smi(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
    r = doctor_json(tmp_path)
    assert set(r) >= REQUIRED
    assert r["gpus"] == [{"name": "NVIDIA A100-SXM4-40GB", "driver": "535.104.05", "compute_cap": "8.0", "vendor": "nvidia"}]
    assert (r["driver"], r["driver_source"], r["max_cuda"], r["recommended"]) == ("535.104.05", "nvidia-smi", "12.9", "cu126")
    assert r["compatible"][-1] == "cpu"
    assert r["os"] == "linux"
    assert r["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_multi_gpu_525(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_multi_525.csv")
    r = doctor_json(tmp_path)
    assert len(r["gpus"]) == 4
    assert {g["compute_cap"] for g in r["gpus"]} == {"7.0"}
    assert r["max_cuda"] == "12.9"
    assert r["recommended"] == "cu126"


def test_multi_gpu_580_mixed(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_multi_580.csv")
    r = doctor_json(tmp_path)
    assert [g["name"] for g in r["gpus"]] == ["NVIDIA GeForce RTX 5090", "NVIDIA RTX A6000"]
    assert r["max_cuda"] == "13.2"
    assert r["recommended"] == "cu132"


@pytest.mark.parametrize(("fixture", "gpus", "caps", "max_cuda", "recommended", "compatible"), [
    ("smi_gtx1080_580.csv", 1, {"6.1"}, "13.2", "cu126", ["cu126", "cpu"]),
    ("smi_multi_525.csv", 4, {"7.0"}, "12.9", "cu126", ["cu126", "cpu"]),
    ("smi_single_535.csv", 1, {"8.0"}, "12.9", "cu126", ["cu126", "cpu"]),
    ("smi_rtx4090_550.csv", 1, {"8.9"}, "12.9", "cu126", ["cu126", "cpu"]),
    ("smi_h100x8_570.csv", 8, {"9.0"}, "12.9", "cu126", ["cu126", "cpu"]),
    ("smi_h200x2_580.csv", 2, {"9.0"}, "13.2", "cu132", ["cu132", "cu130", "cu126", "cpu"]),
    ("smi_b200_580.csv", 1, {"10.0"}, "13.2", "cu132", ["cu132", "cu130", "cpu"]),
    ("smi_multi_580.csv", 2, {"12.0", "8.6"}, "13.2", "cu132", ["cu132", "cu130", "cpu"]),
])
def test_recorded_gpus(tmp_path, fixture, gpus, caps, max_cuda, recommended, compatible):
    """Recorded nvidia-smi of real GPU generations: the build must carry the architecture."""
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / fixture)
    r = doctor_json(tmp_path)
    assert len(r["gpus"]) == gpus
    assert {g["compute_cap"] for g in r["gpus"]} == caps
    assert (r["max_cuda"], r["recommended"], r["compatible"]) == (max_cuda, recommended, compatible)
    assert not any("sit idle" in w for w in r["warnings"])
    # never the legacy variants on every run
    assert not {"cu80", "cu90", "cu92", "cu100", "cu101", "cu102"} & {c["accelerator"] for c in r["candidates"]}


def test_gtx1080_on_580_text(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_gtx1080_580.csv")
    text = doctor(tmp_path).stdout
    assert "recommended cu126 (needs driver >= 525.60.13), torch 2.14" in text
    assert "not         cu132: builds carry sm_75 sm_80 sm_86 sm_90 sm_100 sm_120, not compute 6.1" in text
    assert "rocm" not in text  # no AMD GPU: no noise about ROCm


def test_gpu_idle_warning_on_cpu_fallback(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_k40_470_nocap.csv")
    r = doctor_json(tmp_path)
    assert r["recommended"] == "cpu"
    assert r["gpus"][0]["compute_cap_from_name"] == "3.5"
    idle = [w for w in r["warnings"] if "the GPU will sit idle" in w]
    assert len(idle) == 1
    assert "Tesla K40m (compute 3.5)" in idle[0]
    assert "warning     the GPU will sit idle" in doctor(tmp_path).stdout
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_gtx1080_470_nocap.csv")
    r = doctor_json(tmp_path)
    assert r["recommended"] == "cu118"
    assert any("no current build fits" in w for w in r["warnings"])


def test_driver_470_retries_without_compute_cap(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", None, stderr_on_cap=FIX / "smi_470_nocap.err", fallback=FIX / "smi_470_nocap.csv")
    r = doctor_json(tmp_path)
    assert r["gpus"] == [{"name": "Tesla T4", "driver": "470.182.03", "compute_cap": None, "vendor": "nvidia",
                          "compute_cap_from_name": "7.5"}]
    assert r["max_cuda"] == "11.8"
    assert r["recommended"] == "cu118"
    assert r["compatible"] == ["cu118", "cpu"]


def test_procfs_before_nvidia_smi(tmp_path):
    # /proc says 470 while nvidia-smi (recorded elsewhere) says 535: the file wins, as in uv
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
    r = doctor_json(tmp_path, root=sysroot(tmp_path, proc_version="proc_version_470"))
    assert (r["driver"], r["driver_source"], r["recommended"]) == ("470.182.03", "procfs", "cu118")


def test_procfs_open_module_without_smi(tmp_path):
    r = doctor_json(tmp_path, root=sysroot(tmp_path, proc_version="proc_version_580_open"))
    assert (r["driver"], r["driver_source"], r["max_cuda"]) == ("580.65.06", "procfs", "13.2")


def test_procfs_gpu_names_and_sysfs_first(tmp_path):
    root = sysroot(tmp_path, proc_version="proc_version_535", sys_version="550.54.15", gpu_info=True)
    r = doctor_json(tmp_path, root=root)
    assert (r["driver"], r["driver_source"]) == ("550.54.15", "sysfs")
    assert r["gpus"] == [{"name": "NVIDIA A100-SXM4-40GB", "driver": "550.54.15", "compute_cap": None, "vendor": "nvidia",
                          "compute_cap_from_name": "8.0"}]


def test_env_override_wins(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
    r = doctor_json(tmp_path, env_extra={"TORCHDEPOT_CUDA_DRIVER": "450.80.02"})
    assert (r["driver"], r["driver_source"], r["max_cuda"]) == ("450.80.02", "env", "11.8")
    bad = doctor_json(tmp_path, env_extra={"TORCHDEPOT_CUDA_DRIVER": "latest"})
    assert bad["driver_source"] == "nvidia-smi"
    assert any("TORCHDEPOT_CUDA_DRIVER" in n for n in bad["notes"])


def test_no_gpu_machine(tmp_path):
    r = doctor_json(tmp_path)
    assert r["gpus"] == []
    assert r["driver"] is None
    assert r["max_cuda"] is None
    assert r["compatible"] == ["cpu"]
    assert r["recommended"] == "cpu"
    text = doctor(tmp_path).stdout
    assert "gpu         none found" in text
    assert "recommended cpu" in text


def test_nvidia_smi_without_driver(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_no_driver.out", code=9)
    r = doctor_json(tmp_path)
    assert r["driver"] is None
    assert r["recommended"] == "cpu"
    assert any("couldn't communicate" in n for n in r["notes"])


def test_amd_and_intel(tmp_path):
    fake_tool(tmp_path / "bin", "rocm_agent_enumerator", FIX / "rocm_agents_mi250.txt")
    r = doctor_json(tmp_path)
    assert [g["name"] for g in r["gpus"]] == ["gfx90a", "gfx90a"]
    assert r["recommended"] == "rocm7.2"
    shutil.rmtree(tmp_path / "bin")
    r = doctor_json(tmp_path, root=sysroot(tmp_path, intel=True))
    assert [g["vendor"] for g in r["gpus"]] == ["intel"]
    assert r["recommended"] == "xpu"


def test_parse_smi_ignores_garbage():
    assert parse_smi("No devices were found\n\n, ,\n") == []
    assert detect(root="/nonexistent", env={"PATH": ""}, which=lambda n: None).gpus == ()


# --- a mirror ----------------------------------------------------------------------
def _manifest_mirror(root: Path) -> None:
    targets = []
    for acc, ver in (("cpu", "2.5.1"), ("cu121", "2.5.1"), ("cu118", "2.4.1"), ("cu118", "2.5.1")):
        py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        targets.append({"id": f"{acc}-py{py.replace('.', '')}-linux-x86_64", "kind": "pip", "accelerator": acc,
                        "python": py, "platform": "linux-x86_64", "index": f"whl/{acc}",
                        "packages": [{"name": "torch", "version": f"{ver}+{acc}", "path": "p"}]})
    (root / "manifest.json").write_text(json.dumps({"format": "torchdepot-manifest", "version": 1, "spec": {},
                                                     "files": [], "targets": targets}))


def test_mirror_manifest_choice(tmp_path):
    mroot = tmp_path / "mirror"
    mroot.mkdir()
    _manifest_mirror(mroot)
    with Server(mroot) as srv:
        fake_tool(tmp_path / "bin", "nvidia-smi", None, stderr_on_cap=FIX / "smi_470_nocap.err", fallback=FIX / "smi_470_nocap.csv")
        r = doctor_json(tmp_path, "--mirror", srv.url)
        m = r["mirror"]
        assert m["accelerators"] == ["cpu", "cu118", "cu121"]
        assert m["accelerator"] == "cu118"
        assert m["command"] == f"pip install --index-url {srv.url}/whl/cu118 torch==2.5.1"
        shutil.rmtree(tmp_path / "bin")
        r = doctor_json(tmp_path, "--mirror", srv.url)
        assert r["mirror"]["command"] == f"pip install --index-url {srv.url}/whl/cpu torch==2.5.1"
        text = doctor(tmp_path, "--mirror", srv.url).stdout
        assert f"install     pip install --index-url {srv.url}/whl/cpu torch==2.5.1" in text


def test_mirror_from_index_pages(tmp_path, data_dir):
    """No manifest: the whl/ root lists variant dirs; versions come from the real 2023
    torch page cut per variant."""
    page = (data_dir / CAPTURE_2023 / "torch" / "index.html").read_text()
    # the capture's newest builds are for CPython 3.11: offered to this interpreter as its own
    host = f"cp{sys.version_info.major}{sys.version_info.minor}"
    page = page.replace("cp311", host) if host != "cp311" else page
    anchors = re.findall(r'<a href="[^"]+">[^<]*</a>', page)
    whl = tmp_path / "mirror" / "whl"
    for acc in ("cpu", "cu117", "cu118"):
        (whl / acc / "torch").mkdir(parents=True)
        (whl / acc / "torch" / "index.html").write_text("\n".join(a for a in anchors if f"/whl/{acc}/" in a))
    (whl / "index.html").write_text('<a href="cpu/">cpu</a><a href="cu117/">cu117</a><a href="cu118/">cu118</a><a href="torch/">torch</a>')
    with Server(tmp_path / "mirror") as srv:
        fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
        r = doctor_json(tmp_path, "--mirror", srv.url)
    m = r["mirror"]
    assert m["accelerators"] == ["cpu", "cu117", "cu118"]
    assert m["accelerator"] == "cu118"
    assert m["command"] == f"pip install --index-url {srv.url}/whl/cu118 torch==2.1.0"  # newest cu118 torch in the capture


def test_mirror_unreachable_is_one_line_error(tmp_path):
    proc = doctor(tmp_path, "--mirror", "http://127.0.0.1:9/", check_rc=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("torchdepot: error: http://127.0.0.1:9")
    assert "Traceback" not in proc.stderr


def test_mirror_down_still_prints_the_local_report_then_the_error(tmp_path):
    """Issue 22 item 17: the machine/GPU report needs no network; it prints, then the error, exit 1.
    The address has no scheme, as people type it: http:// is assumed, and said."""
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
    proc = doctor(tmp_path, "--mirror", "127.0.0.1:9", check_rc=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith("machine     ")
    assert "gpu         " in proc.stdout
    assert "recommended " in proc.stdout
    assert "assumed http://127.0.0.1:9" in proc.stdout
    assert proc.stderr.startswith("torchdepot: error: http://127.0.0.1:9/")
    assert "redirect" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    r = json.loads(doctor(tmp_path, "--json", "--mirror", "127.0.0.1:9", check_rc=False).stdout)
    assert r["recommended"]
    assert r["mirror"]["url"] == "http://127.0.0.1:9"
    assert r["mirror"]["error"].startswith("http://127.0.0.1:9/")


def test_mirror_without_a_scheme_is_read_over_http(tmp_path):
    mroot = tmp_path / "mirror"
    mroot.mkdir()
    _manifest_mirror(mroot)
    with Server(mroot) as srv:
        bare = srv.url.split("://", 1)[1]
        r = doctor_json(tmp_path, "--mirror", bare)
    assert r["mirror"]["accelerators"] == ["cpu", "cu118", "cu121"]
    assert r["mirror"]["command"] == f"pip install --index-url {srv.url}/whl/cpu torch==2.5.1"
    assert r["mirror"]["note"].startswith(f"{bare!r} has no scheme")


def test_mirror_url_completion(tmp_path):
    from torchdepot.doctor.mirror import mirror_url
    assert mirror_url("http://torchlab:8000") == ("http://torchlab:8000", None)
    assert mirror_url("torchlab:8000")[0] == "http://torchlab:8000"
    assert mirror_url(str(tmp_path))[0] == tmp_path.resolve().as_uri()


@pytest.mark.e2e
def test_mirror_that_accepts_and_never_answers_ends_in_seconds(tmp_path):
    """A listening socket nobody reads: the connection is accepted (backlog), no byte comes back.
    It took 21 s (2 attempts x 10 s read timeout + backoff); the bound is one short read."""
    import socket
    import time
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(50)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        proc = doctor(tmp_path, "--mirror", url, check_rc=False)
        took = time.monotonic() - start
    assert proc.returncode == 1
    assert proc.stdout.startswith("machine     ")
    assert proc.stderr.startswith(f"torchdepot: error: {url}/manifest.json: timed out")
    assert took < 10, took


def test_doctor_deadline_stops_asking_for_pages(tmp_path):
    """The whole read is bounded, not only each request: past the deadline no page is asked for."""
    from torchdepot.doctor.mirror import DOCTOR_HTTP, read_mirror
    from torchdepot.errors import UpstreamError
    from torchdepot.net.http import make_session
    whl = tmp_path / "mirror" / "whl"
    (whl / "cpu" / "torch").mkdir(parents=True)
    (whl / "index.html").write_text('<a href="cpu/">cpu</a>')
    (whl / "cpu" / "torch" / "index.html").write_text("")
    with Server(tmp_path / "mirror") as srv, make_session(DOCTOR_HTTP) as client:
        with pytest.raises(UpstreamError, match="no complete answer within 0 s"):
            read_mirror(client, srv.url, deadline=0.0)
        assert read_mirror(client, srv.url).accelerators == ["cpu"]


# --- --check on an installed torch ---------------------------------------------------
def fake_env(tmp: Path, torch_version: str, cuda: str | None, available: bool, numpy_broken: bool = False,
             arch_list: tuple[str, ...] = ()) -> str:
    """A throwaway venv holding a recorded stand-in of an installed torch (its public
    attributes only) and optionally a numpy that fails like an ABI mismatch does."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(textwrap.dedent(f"""
        __version__ = {torch_version!r}
        class version:
            cuda = {cuda!r}
            hip = None
        class cuda:
            @staticmethod
            def is_available():
                return {available!r}
            @staticmethod
            def device_count():
                return 1
            @staticmethod
            def get_arch_list():
                return {list(arch_list)!r}
        def from_numpy(a):
            return a
    """))
    if numpy_broken:
        (site / "numpy").mkdir()
        (site / "numpy" / "__init__.py").write_text(
            "raise ImportError('numpy.core.multiarray failed to import')\n")
    return str(venv / "bin" / "python")


def test_check_cuda_build_too_new_for_driver(tmp_path):
    py = fake_env(tmp_path, "2.5.1+cu124", "12.4", False)
    fake_tool(tmp_path / "bin", "nvidia-smi", None, stderr_on_cap=FIX / "smi_470_nocap.err", fallback=FIX / "smi_470_nocap.csv")
    proc = doctor(tmp_path, "--check", "--python", py, check_rc=False)
    assert proc.returncode == 1
    assert "problem     torch 2.5.1+cu124 needs CUDA 12.4 but the driver supports up to 11.8" in proc.stdout


def test_check_ok_and_numpy_broken(tmp_path):
    py = fake_env(tmp_path, "2.5.1+cpu", None, False)
    r = doctor_json(tmp_path, "--check", "--python", py)
    assert r["check"]["problems"] == []
    assert r["check"]["result"]["torch"] == "2.5.1+cpu"
    shutil.rmtree(tmp_path / "venv")
    py = fake_env(tmp_path, "2.5.1+cu121", "12.1", True, numpy_broken=True)
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_single_535.csv")
    proc = doctor(tmp_path, "--json", "--check", "--python", py, check_rc=False)
    assert proc.returncode == 1
    probs = json.loads(proc.stdout)["check"]["problems"]
    assert probs == ["numpy: ImportError: numpy.core.multiarray failed to import"]


def test_check_build_without_the_gpus_arch(tmp_path):
    """The issue's failure, caught after the fact: cu130 wheels on a GTX 1080."""
    py = fake_env(tmp_path, "2.9.1+cu130", "13.0", True,
                  arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"))
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_gtx1080_580.csv")
    proc = doctor(tmp_path, "--check", "--python", py, check_rc=False)
    assert proc.returncode == 1
    assert "problem     torch 2.9.1+cu130 has no kernels for compute 6.1 (its arch list: sm_75" in proc.stdout


def test_findings_pure():
    base = {"torch": "2.5.1+cu121", "cuda": "12.1", "cuda_available": True, "numpy_error": None}
    assert check.findings(base, "12.9", True) == []
    assert "no NVIDIA driver" in check.findings(base, None, False)[0]
    assert "is_available() == False" in check.findings({**base, "cuda_available": False}, "12.9", True)[0]
    assert "CPU-only build" in check.findings({"torch": "2.5.1+cpu", "cuda": None}, "12.9", True)[0]
    assert check.findings({"torch": None, "error": "x"}, None, False) == ["torch is not importable: x"]
    arches = {**base, "arch_list": ["sm_70", "sm_80", "compute_80"]}
    assert check.findings(arches, "12.9", True, ((8, 6), (7, 5), (9, 0))) == []  # 7.5 via sm_70, 9.0 via PTX 8.0
    assert "no kernels for compute 6.1" in check.findings(arches, "12.9", True, ((6, 1),))[0]


# --- the printed install line, verbatim, against a plain-HTTP mirror on a LAN name ------------
def _tiny_mirror(root: Path) -> None:
    from tests.kit.upstream import pep503
    from tests.kit.wheels import wheel_bytes

    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pep503([wheel_bytes("torch", "2.5.1+cpu")], pages=["/whl/cpu"], files="/whl/cpu/torch", metadata=False).write(root)
    (root / "manifest.json").write_text(json.dumps({"format": "torchdepot-manifest", "version": 1, "spec": {}, "files": [],
        "targets": [{"id": "cpu", "kind": "pip", "accelerator": "cpu", "python": py, "platform": "linux-x86_64",
                     "index": "whl/cpu", "packages": [{"name": "torch", "version": "2.5.1+cpu", "path": "p"}]}]}))


@pytest.mark.slow
def test_printed_install_lines_work_verbatim_on_a_lan_host(tmp_path):
    """doctor --mirror http://torchlab:8000 (a LAN name, plain HTTP) prints pip and uv lines;
    each runs exactly as printed and installs the mirror's torch. Control: pip's line without
    --trusted-host ignores the index, as on a real LAN."""
    from tests.kit.lanproxy import LanProxy
    from tests.venvs import hermetic_env, make_venv

    _tiny_mirror(tmp_path / "mirror")
    with Server(tmp_path / "mirror") as srv, LanProxy({"torchlab:8000": srv.httpd.server_address[:2]}) as proxy:
        base = proxy.env(hermetic_env())
        text = doctor(tmp_path, "--mirror", "http://torchlab:8000", env_extra={
            k: v for k, v in base.items() if "proxy" in k.lower()}).stdout
        lines = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("install ")]
        assert lines == ["pip install --index-url http://torchlab:8000/whl/cpu --trusted-host torchlab:8000 torch==2.5.1",
                         "uv pip install --index-url http://torchlab:8000/whl/cpu --allow-insecure-host torchlab:8000 torch==2.5.1"]
        for i, line in enumerate(lines):
            venv = tmp_path / f"venv{i}"
            py = make_venv(venv)
            # own caches: other tests serve other mirrors under the same LAN name, and uv/pip cache pages by URL
            env = {**base, "PATH": f"{venv / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv),
                   "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "PIP_CACHE_DIR": str(tmp_path / "pip-cache")}
            if i == 0:  # control first: the same line without the trust option fails
                bare = subprocess.run(line.replace(" --trusted-host torchlab:8000", ""), shell=True, env=env,
                                      capture_output=True, text=True, timeout=120)
                assert bare.returncode != 0
                assert "torchlab" in bare.stdout + bare.stderr
            proc = subprocess.run(line, shell=True, env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            got = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
            assert got.stdout.strip() == "2.5.1+cpu"
        assert any(s.startswith("GET http://torchlab:8000/whl/cpu/torch") for s in proxy.seen)


def test_mirror_unreachable_fails_fast(tmp_path):
    """A host that drops packets (a listening socket whose accept queue is full: SYNs go
    unanswered): one line, within a bounded time, not 5 x 10 s per URL."""
    import time

    from tests.kit.blackhole import CONNECT_ENV, blackhole
    from torchdepot.doctor.mirror import DOCTOR_HTTP

    with blackhole() as port:  # connect timeout injected short: attempts counted, not waited out
        t = time.monotonic()
        proc = doctor(tmp_path, "--mirror", f"http://127.0.0.1:{port}/", check_rc=False, env_extra=CONNECT_ENV)
        took = time.monotonic() - t
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    attempts = DOCTOR_HTTP.retries + 1  # each waits the injected connect timeout, none more
    assert proc.stderr.startswith(f"torchdepot: error: http://127.0.0.1:{port}/manifest.json: timed out (after {attempts} attempts)")
    assert took < 15, took


def test_deeply_nested_manifest_is_one_line_after_the_local_report(tmp_path):
    """Issue 22 item 12: a manifest.json nested 100,000 deep was 'unexpected RecursionError (a bug)'."""
    mroot = tmp_path / "mirror"
    mroot.mkdir()
    (mroot / "manifest.json").write_text('{"targets": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = doctor(tmp_path, "--mirror", mroot.as_uri(), check_rc=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith("machine     ")
    # not a torchdepot manifest (errors.load_json): read as a plain index, which it is not either
    assert proc.stderr.startswith(f"torchdepot: error: {mroot.as_uri()}/")
    assert proc.stderr.count("\n") == 1
    assert "RecursionError" not in proc.stderr
