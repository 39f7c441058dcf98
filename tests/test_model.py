"""The model on hand-picked shapes from ../shared/DOMAIN.md §2-3."""

import pytest

from torchdepot.errors import ParseError
from torchdepot.model.accel import Accelerator, parse_accelerator
from torchdepot.model.condabuild import parse_build_string
from torchdepot.model.wheelname import parse_wheel


@pytest.mark.parametrize(
    ("text", "acc", "source", "plat", "glibc"),
    [
        ("torch-2.7.0+cu128-cp310-cp310-manylinux_2_28_aarch64.whl", "cu128", "local", "linux-aarch64", (2, 28)),
        ("torch-2.7.0%2Bcu128-cp310-cp310-win_amd64.whl", "cu128", "local", "windows-amd64", None),
        ("cu92/torch-1.5.0%2Bcu92-cp37-cp37m-linux_x86_64.whl", "cu92", "local", "linux-x86_64", None),
        ("torch-1.2.0+cpu-cp36-cp36m-manylinux1_x86_64.whl", "cpu", "local", "linux-x86_64", (2, 5)),
        ("https://download.pytorch.org/whl/cu80/torch-0.3.0.post4-cp36-cp36m-linux_x86_64.whl", "cu80", "dir", "linux-x86_64", None),
        ("https://download.pytorch.org/whl/nightly/cu126/torch-2.6.0.dev20250102%2Bcu126-cp313-cp313t-manylinux_2_28_x86_64.whl", "cu126", "local", "linux-x86_64", (2, 28)),
        ("torch-2.5.1+rocm6.2-cp311-cp311-linux_x86_64.whl", "rocm6.2", "local", "linux-x86_64", None),
        ("torch-2.0.1+rocm5.4.2-cp38-cp38-linux_x86_64.whl", "rocm5.4.2", "local", "linux-x86_64", None),
        ("torch-2.7.0+xpu-cp39-cp39-win_amd64.whl", "xpu", "local", "windows-amd64", None),
        ("torch-2.1.0+cpu.cxx11.abi-cp311-cp311-linux_x86_64.whl", "cpu", "local", "linux-x86_64", None),
        ("flash_attn-2.8.3+cu.12.8.torch.2.11-cp311-cp311-linux_x86_64.whl", "cu128", "local", "linux-x86_64", None),
        ("torch-2.1.0-cp311-none-macosx_11_0_arm64.whl", None, None, "macos-arm64", None),
        ("torchvision-0.2.0-py2.py3-none-any.whl", None, None, "any", None),
        ("torch-2.0.0+e437e35-cp310-cp310-linux_x86_64.whl", None, None, "linux-x86_64", None),
    ],
)
def test_wheel_shapes(text, acc, source, plat, glibc):
    w = parse_wheel(text)
    assert (w.accelerator.name if w.accelerator else None) == acc
    assert w.accelerator_source == source
    assert w.platform.name == plat
    assert w.platform.glibc == glibc


def test_wheel_fields():
    w = parse_wheel("torch-2.6.0.dev20250102+cu126-cp313-cp313t-manylinux_2_28_x86_64.whl")
    assert (w.name, w.public_version, w.local) == ("torch", "2.6.0.dev20250102", "cu126")
    assert w.python_tags == ("cp313",)
    assert w.abi_tags == ("cp313t",)
    assert w.free_threaded
    assert w.pythons == ("3.13",)
    assert w.accelerator == Accelerator("cuda", (12, 6))
    assert w.accelerator.cuda_version == "12.6"


@pytest.mark.parametrize("bad", ["", "torch.whl", "not-a-wheel.tar.gz", "torch-1.0-cp3-x.whl", "a b-1-py3-none-any.whl"])
def test_wheel_errors(bad):
    with pytest.raises(ParseError):
        parse_wheel(bad)


@pytest.mark.parametrize(
    ("build", "acc", "py", "number"),
    [
        ("py3.10_cuda11.8_cudnn8.7.0_0", "cu118", "3.10", 0),
        ("py3.7_cuda10.1.243_cudnn7.6.3_0", "cu101", "3.7", 0),
        ("py3.10_cpu_0", "cpu", "3.10", 0),
        ("cuda129_mkl_py312_h1234abc_302", "cu129", "3.12", 302),
        ("cpu_mkl_py311_h1234abc_100", "cpu", "3.11", 100),
        ("cpu_generic_py311_habcdef0_0", "cpu", "3.11", 0),
        ("cuda118_py310h1234567_300", "cu118", "3.10", 300),
        ("cuda112py39h1234567_1", "cu112", "3.9", 1),
        ("py310_cu118", "cu118", "3.10", None),
        ("py39_cpu", "cpu", "3.9", None),
        ("py3.9_h1234567_0_cuda11.3", "cu113", "3.9", 0),
        ("h7e8dc5f_5", None, None, 5),
        ("py39_cuNone_0", None, "3.9", 0),
    ],
)
def test_conda_builds(build, acc, py, number):
    b = parse_build_string(build)
    assert (b.accelerator.name if b.accelerator else None) == acc
    assert b.python == py
    assert b.build_number == number


@pytest.mark.parametrize(("text", "name"), [("cu118", "cu118"), ("rocm6.2.4", "rocm6.2.4"), ("cpu", "cpu"), ("xpu", "xpu"), ("cu117_pypi_cudnn", "cu117")])
def test_parse_accelerator(text, name):
    assert parse_accelerator(text).name == name


def test_parse_accelerator_rejects():
    with pytest.raises(ParseError):
        parse_accelerator("cuda-11")
